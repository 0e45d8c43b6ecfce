"""ShapesWorld's two generators, registered as ``shapes_model`` and ``shapes_render``.

* ``shapes_model``: the tiny text-to-image diffusion model (:class:`ShapesPipeline`): ``model`` is a
  pipeline folder (null: the shipped one), ``unet`` a trained U-Net or LoRA weights swapped in
  (:func:`instructengine.generation.unet.load_trained_unet`), ``dtype: bfloat16`` samples under
  autocast (weights stay float32). Options: ``sampler`` (dpmpp | ddim), ``perturb`` (add
  perturb x std(param) Gaussian noise to every U-Net weight: "a perturbed copy") and
  ``perturb_seed``. One call is one sampler batch; on CPU large calls pay off.
* ``shapes_render``: the renderer; every image matches its caption exactly, or, with option
  ``error_rate`` > 0, shows one attribute wrong with that probability (an imperfect generator,
  :mod:`instructengine.shapes.mistakes`). A prompt that is not a ShapesWorld caption raises
  ``CaptionError`` (a ValueError), which the candidates stage records as that instruction's failure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

from instructengine.generation import Generated, GeneratorConfig
from instructengine.generation.base import check_call

__all__ = ["MODEL_OPTIONS", "RENDER_OPTIONS", "ShapesModelGenerator", "ShapesRenderGenerator"]

MODEL_OPTIONS: dict[str, Any] = {"sampler": "dpmpp", "perturb": 0.0, "perturb_seed": 1234}
RENDER_OPTIONS: dict[str, Any] = {"error_rate": 0.0}


def _options(cfg: GeneratorConfig, known: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(cfg.options) - set(known))
    if unknown:
        raise ValueError(f"generator kind {cfg.kind!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    return {**known, **cfg.options}


class ShapesModelGenerator:
    """The ShapesWorld text-to-image model (see the module doc)."""

    def __init__(self, cfg: GeneratorConfig, pipe: Any = None):
        import torch

        from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR, load_pipeline

        self.cfg = cfg
        self.options = _options(cfg, MODEL_OPTIONS)
        if self.options["sampler"] not in ("dpmpp", "ddim"):
            raise ValueError(f"generator kind 'shapes_model': option sampler={self.options['sampler']!r}; "
                             "expected 'dpmpp' or 'ddim'")
        self.fingerprint = cfg.fingerprint()
        if pipe is None:
            pipe = load_pipeline(cfg.model, device=cfg.device)
        if cfg.unet:
            from instructengine.generation.unet import load_trained_unet

            base = Path(cfg.model or DEFAULT_MODEL_DIR) / "unet"
            try:
                unet = load_trained_unet(base, cfg.unet)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"generator kind 'shapes_model': unet={cfg.unet!r}: {err}") from None
            pipe.unet = unet.to(cfg.device).eval()
        perturb = float(self.options["perturb"])
        if perturb:
            g = torch.Generator().manual_seed(int(self.options["perturb_seed"]))
            with torch.no_grad():
                for p in pipe.unet.parameters():
                    p.add_(perturb * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
        # channels-last convolutions: ~1.2x faster on these CPUs (measured in docs/data_pipeline_images.md)
        pipe.unet.to(memory_format=torch.channels_last)
        self.pipe = pipe
        self.can_flag = False

    def describe(self) -> dict[str, Any]:
        return {"kind": self.cfg.kind, "model": self.cfg.model or "shipped", "unet": self.cfg.unet, **self.options}

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        import torch

        check_call(prompts, seeds)
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
                sampler=self.options["sampler"],
                text_noise_sigma=cfg.text_noise_sigma,
                batch_size=max(1, len(prompts)),
            )
        return Generated(list(arr))


class ShapesRenderGenerator:
    """The ShapesWorld renderer as a generator (see the module doc)."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        cfg = cfg or GeneratorConfig(kind="shapes_render")
        self.cfg = cfg
        options = _options(cfg, RENDER_OPTIONS)
        self.error_rate = float(options["error_rate"])
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"generator kind 'shapes_render': option error_rate={self.error_rate} must lie in [0, 1]")
        self.fingerprint = cfg.fingerprint()
        self.can_flag = False

    def describe(self) -> dict[str, Any]:
        return {"kind": "shapes_render", "error_rate": self.error_rate}

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated:
        from instructengine.shapes.mistakes import imperfect_scene
        from instructengine.shapes.render import render

        check_call(prompts, seeds)
        images = []
        for p, s in zip(prompts, seeds):
            scene, _ = imperfect_scene(p, int(s), self.error_rate)
            images.append(render(scene, int(s)))
        return Generated(images)
