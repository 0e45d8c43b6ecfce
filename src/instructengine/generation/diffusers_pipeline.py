"""Any diffusers text-to-image pipeline (SD1.5, SDXL, ...) as an :class:`ImageGenerator`."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from instructengine.generation.base import Generated, GeneratorConfig, check_call, text_noise

__all__ = ["DiffusersGenerator", "swap_scheduler"]


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class DiffusersGenerator:
    """A diffusers pipeline by Hub id or local folder, optionally with a trained U-Net (``unet``:
    a folder or LoRA weights, fused) and/or a LoRA loaded with ``load_lora_weights`` (``lora``).

    The initial noise of image ``i`` comes from ``torch.Generator('cpu').manual_seed(seeds[i])`` (the
    same on any device). With ``text_noise_sigma > 0`` the prompt embeddings are computed with the
    pipeline's ``encode_prompt`` and perturbed per image (SD-style pipelines return 2 embeddings,
    SDXL-style 4; the pooled SDXL embedding is left as is). ``Generated.flagged`` holds the safety
    checker's flags (None without a checker).
    """

    def __init__(self, cfg: GeneratorConfig, pipe: Any = None):
        self.cfg = cfg
        self.fingerprint = cfg.fingerprint()
        dtype = _torch_dtype(cfg.dtype)
        if pipe is None:
            pipe = _load_pipeline(cfg, dtype)
        if cfg.lora:
            pipe.load_lora_weights(cfg.lora, adapter_name="generator_lora")
            pipe.set_adapters(["generator_lora"], adapter_weights=[cfg.lora_scale])
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(cfg.device)
        self.can_flag = getattr(pipe, "safety_checker", None) is not None

    def describe(self) -> dict[str, Any]:
        import diffusers

        return {
            "kind": "diffusers",
            "pipeline_class": type(self.pipe).__name__,
            "scheduler_class": type(self.pipe.scheduler).__name__,
            "scheduler_config": dict(self.pipe.scheduler.config),
            "diffusers_version": diffusers.__version__,
            "noise": "per image: torch.Generator('cpu').manual_seed(seed)",
        }

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        import torch

        check_call(prompts, seeds)
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            output_type="np",
        )
        if cfg.height:
            kwargs["height"] = cfg.height
        if cfg.width:
            kwargs["width"] = cfg.width
        negative = [cfg.negative_prompt] * len(prompts) if cfg.negative_prompt is not None else None
        with torch.no_grad():
            if cfg.text_noise_sigma > 0:
                kwargs.update(self._noisy_embeddings(list(prompts), seeds, negative))
            else:
                kwargs["prompt"] = list(prompts)
                if negative is not None:
                    kwargs["negative_prompt"] = negative
            out = self.pipe(**kwargs)
        images = [np.round(np.clip(im, 0, 1) * 255).astype(np.uint8) for im in np.asarray(out.images)]
        flags = getattr(out, "nsfw_content_detected", None)
        return Generated(images, [bool(f) for f in flags] if flags is not None else None)

    def _noisy_embeddings(self, prompts: list[str], seeds: Sequence[int], negative: list[str] | None) -> dict[str, Any]:
        pipe = self.pipe
        device = getattr(pipe, "_execution_device", pipe.device)
        encoded = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=self.cfg.guidance_scale > 1,
            negative_prompt=negative,
        )
        if not isinstance(encoded, tuple) or len(encoded) not in (2, 4):
            raise ValueError(
                f"text_noise_sigma > 0 needs a pipeline whose encode_prompt returns 2 (SD-style) or 4 (SDXL-style) "
                f"embeddings; {type(pipe).__name__}.encode_prompt returned {type(encoded).__name__}"
            )
        embeds = encoded[0]
        embeds = embeds + self.cfg.text_noise_sigma * text_noise(seeds, tuple(embeds.shape[1:])).to(embeds)
        names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
        out = dict(zip(names, (embeds, *encoded[1:])))
        return {k: v for k, v in out.items() if v is not None}


def _load_pipeline(cfg: GeneratorConfig, dtype: Any) -> Any:
    import torch
    from diffusers import DiffusionPipeline

    from instructengine.generation.unet import load_trained_unet

    kwargs: dict[str, Any] = {"local_files_only": cfg.local_files_only}
    if dtype != torch.float32:  # float32 is the default (and newer diffusers warn about torch_dtype)
        kwargs["torch_dtype"] = dtype
    if cfg.disable_safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if cfg.unet:
        kwargs["unet"] = load_trained_unet(cfg.model, cfg.unet, dtype)
    with warnings.catch_warnings():
        # `torch_dtype` works on every diffusers this package supports (>= 0.31); 0.42 renamed it
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        pipe = DiffusionPipeline.from_pretrained(cfg.model, **kwargs)
    if cfg.scheduler:
        swap_scheduler(pipe, cfg.scheduler, "generator.scheduler")
    return pipe


def swap_scheduler(pipe: Any, name: str, where: str) -> None:
    """Replace ``pipe.scheduler`` by diffusers' class ``name`` built from the current scheduler's config.

    Raises:
        ValueError: diffusers has no scheduler class of that name (the message starts with ``where``).
    """
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{where}: diffusers has no scheduler class {name!r}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
