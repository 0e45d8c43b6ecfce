"""Generator backends of the candidates stage, behind one protocol.

An :class:`ImageGenerator` draws one image per (prompt, seed) in ONE batched call::

    generate(prompts: list[str], seeds: list[int]) -> Generated

Image ``i`` must depend only on ``(prompts[i], seeds[i])`` and the model, not on its batch
neighbours (each image's initial noise comes from its own seeded generator) - up to CPU/GPU
rounding, which can differ with the batch size; the candidates stage therefore always makes an
image in the same call, so a resumed or re-sharded run reproduces it bit for bit.
``fingerprint`` names what determines the pixels; the candidates stage refuses to mix images of
two fingerprints in one folder.

Backends: any diffusers text-to-image pipeline (:class:`DiffusersImageGenerator`), the
ShapesWorld diffusion model (:class:`ShapesModelGenerator`), the ShapesWorld renderer
(:class:`ShapesRenderGenerator`, a perfect generator for tests). AGFSync's Gaussian noise on the
text condition (``text_noise_sigma``) is supported by the two diffusion backends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from instructengine.images.config import GeneratorConfig

__all__ = [
    "DiffusersImageGenerator",
    "Generated",
    "ImageGenerator",
    "ShapesModelGenerator",
    "ShapesRenderGenerator",
    "build_generator",
    "text_noise",
]

#: offset between an image's noise seed and its text-noise seed (the two draws must differ)
TEXT_NOISE_SEED_OFFSET = 7_919


@dataclass
class Generated:
    """The images of one call (uint8 arrays (H, W, 3), in call order) and, when the backend has
    a safety checker, whether each was flagged (a flagged image is blacked out by diffusers)."""

    images: list[np.ndarray]
    flagged: list[bool] | None = None


@runtime_checkable
class ImageGenerator(Protocol):
    fingerprint: str

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated: ...


def _check(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per image")


def text_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> Any:
    """Per-image Gaussian noise for the text condition, drawn from each image's seed (CPU generator,
    so it is the same on every device)."""
    import torch

    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s) + TEXT_NOISE_SEED_OFFSET)) for s in seeds]
    )


class DiffusersImageGenerator:
    """Any diffusers text-to-image pipeline (SD1.5, SDXL, ...) by Hub id or local folder.

    The initial noise of image ``i`` comes from ``torch.Generator('cpu').manual_seed(seeds[i])``.
    With ``text_noise_sigma > 0`` the prompt embeddings are computed with the pipeline's
    ``encode_prompt`` and perturbed per image (SD-style pipelines return 2 embeddings, SDXL-style 4;
    the pooled SDXL embedding is left as is).
    """

    def __init__(self, cfg: GeneratorConfig, pipe: Any = None):
        import torch

        self.cfg = cfg
        self.fingerprint = cfg.fingerprint()
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.dtype]
        if pipe is None:
            from diffusers import DiffusionPipeline

            kwargs: dict[str, Any] = {"local_files_only": cfg.local_files_only}
            if dtype != torch.float32:  # float32 is the default (and newer diffusers warn about torch_dtype)
                kwargs["torch_dtype"] = dtype
            if cfg.disable_safety_checker:
                kwargs.update(safety_checker=None, requires_safety_checker=False)
            pipe = DiffusionPipeline.from_pretrained(cfg.model, **kwargs)
            if cfg.scheduler:
                from instructengine.evaluate.generation import swap_scheduler

                swap_scheduler(pipe, cfg.scheduler, "generator.scheduler")
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(cfg.device)
        self.can_flag = getattr(pipe, "safety_checker", None) is not None

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        import torch

        _check(prompts, seeds)
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


class ShapesModelGenerator:
    """The ShapesWorld text-to-image model (``instructengine.shapes.pipeline.ShapesPipeline``).

    ``dtype: bfloat16`` runs the sampler under autocast (weights stay float32). One call is one
    sampler batch; on CPU large calls pay off (fixed per-step costs are shared): see
    ``candidates.instructions_per_call``.
    """

    def __init__(self, cfg: GeneratorConfig, pipe: Any = None):
        self.cfg = cfg
        self.fingerprint = cfg.fingerprint()
        if pipe is None:
            from instructengine.shapes.pipeline import load_pipeline

            pipe = load_pipeline(cfg.model, device=cfg.device)
        import torch

        # channels-last convolutions: ~1.2x faster on these CPUs (measured in docs/data_pipeline_images.md)
        pipe.unet.to(memory_format=torch.channels_last)
        self.pipe = pipe
        self.can_flag = False

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        import torch

        _check(prompts, seeds)
        cfg = self.cfg
        autocast = (
            torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16)
            if cfg.dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with autocast:
            arr = self.pipe(
                list(prompts),
                [int(s) for s in seeds],
                guidance_scale=cfg.guidance_scale,
                num_inference_steps=cfg.num_inference_steps,
                sampler=cfg.sampler,
                text_noise_sigma=cfg.text_noise_sigma,
                batch_size=max(1, len(prompts)),
            )
        return Generated(list(arr))


class ShapesRenderGenerator:
    """The ShapesWorld renderer as a generator: every image matches its caption exactly, or, with
    ``error_rate`` > 0, shows one attribute wrong with that probability (an imperfect generator;
    :mod:`instructengine.shapes.mistakes`).

    A prompt that is not a ShapesWorld caption raises ``CaptionError`` (a ValueError), which the
    candidates stage records as that instruction's failure.
    """

    def __init__(self, cfg: GeneratorConfig | None = None):
        cfg = cfg or GeneratorConfig(kind="shapes_render")
        self.fingerprint = cfg.fingerprint()
        self.error_rate = cfg.error_rate
        self.can_flag = False

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        from instructengine.shapes.mistakes import imperfect_scene
        from instructengine.shapes.render import render

        _check(prompts, seeds)
        images = []
        for p, s in zip(prompts, seeds):
            scene, _ = imperfect_scene(p, int(s), self.error_rate)
            images.append(render(scene, int(s)))
        return Generated(images)


def build_generator(cfg: GeneratorConfig) -> ImageGenerator:
    """The generator ``cfg`` names (models are loaded here).

    Raises:
        ValueError: a python target that does not return an ImageGenerator; errors of the loaders
            (missing folder, unknown Hub id) pass through with their own message.
    """
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    if cfg.kind == "diffusers":
        return DiffusersImageGenerator(cfg)
    if cfg.kind == "shapes_model":
        return ShapesModelGenerator(cfg)
    if cfg.kind == "shapes_render":
        return ShapesRenderGenerator(cfg)
    from instructengine.backends import load_target

    gen = load_target(cfg.target)(**cfg.options)
    if not isinstance(gen, ImageGenerator):
        raise ValueError(
            f"generator.target {cfg.target!r} returned {type(gen).__name__}, which lacks `fingerprint` and "
            "`generate(prompts, seeds) -> Generated`"
        )
    return gen
