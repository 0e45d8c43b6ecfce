"""Validation images during training: fixed prompts and seeds, sampled from the model being trained.

The diffusers training scripts' ``log_validation`` habit, for every model kind: :func:`sample_images`
samples through the :class:`~instructengine.train.models.ModelAdapter` (its text encoding, its
unconditional text, its U-Net keyword arguments and its decoder), with a DDIM sampler built from
the adapter's own noise schedule ("trailing" spacing, so a few steps start from pure noise) and
classifier-free guidance. Image ``i`` starts from ``torch.Generator('cpu').manual_seed(seeds[i])``,
as in the generation stack, so the same prompt and seed give comparable images at every step.

:class:`Validator` picks the steps, writes ``validation/step-<step>.png`` (a grid: one row per
prompt, one column per seed) and ``validation/prompts.json`` in the training folder, and hands the
images to the trackers (tensorboard ``add_images``, wandb ``wandb.Image``).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from instructengine.train.models import ModelAdapter, cat_cond

__all__ = ["Validator", "image_grid", "resolve_prompts", "sample_images"]


def resolve_prompts(cfg: Any, work_dir: Path) -> list[str]:
    """``cfg.prompts`` followed by the first ``cfg.max_prompts`` of ``cfg.prompt_set`` (a
    ``validation_prompts`` registry name, written to ``work_dir``, or a prompt file).

    Raises:
        FileNotFoundError: ``prompt_set`` is neither a registered name nor an existing file.
    """
    prompts = list(cfg.prompts)
    if cfg.prompt_set:
        from instructengine import registry
        from instructengine.evaluate.benchmarks import load_prompt_file

        source = cfg.prompt_set
        if source in registry.available("validation_prompts"):
            source = registry.instantiate("validation_prompts", source, Path(work_dir) / f"prompt_set-{source}.csv")
        elif not Path(source).exists():
            raise FileNotFoundError(
                f"validation.prompt_set {cfg.prompt_set!r} is neither a validation_prompts name "
                f"({registry.available('validation_prompts')}) nor an existing prompt file"
            )
        prompts += list(load_prompt_file(source).prompts)[: cfg.max_prompts]
    return prompts


@torch.no_grad()
def sample_images(
    adapter: ModelAdapter,
    unet: Callable[..., Any],
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """One image per (prompt, seed) pair, ``(N, H, W, 3)`` uint8.

    ``unet`` is a callable with the U-Net's signature (the trained one, unwrapped); the adapter's
    frozen parts must be on its device. ``dtype`` is the U-Net's input dtype (None: the adapter's
    weight dtype). Uses no global random state.
    """
    from diffusers import DDIMScheduler

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per image")
    sched = DDIMScheduler.from_config(adapter.noise_scheduler.config, timestep_spacing="trailing", steps_offset=0)
    sched.set_timesteps(num_inference_steps)
    device = adapter.device
    size = adapter.latent_size(resolution)
    channels = adapter.unet_config.in_channels
    noise = torch.stack([torch.randn((channels, size, size), generator=torch.Generator("cpu").manual_seed(int(s)))
                         for s in seeds])
    x = noise.to(device) * sched.init_noise_sigma
    n = len(prompts)
    guided = guidance_scale > 1.0
    cond = adapter.encode_text(list(prompts))
    if guided:
        cond = cat_cond([adapter.null_text(n), cond])
    dtype = dtype or adapter.weight_dtype
    cond = {k: v.to(dtype) for k, v in cond.items()}
    micro = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
    kwargs = adapter.unet_kwargs(cond, micro.expand(len(cond["encoder_hidden_states"]), 6))
    for t in sched.timesteps:
        inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
        with autocast():
            out = unet(inp.to(dtype), t.expand(len(inp)).to(device), **kwargs).sample.float()
        if guided:
            u, c = out.chunk(2)
            out = u + guidance_scale * (c - u)
        x = sched.step(out, t, x).prev_sample
    pixels = ((adapter.decode(x).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, rows: int, cols: int) -> Any:
    """A PIL image of ``rows x cols`` tiles (``images`` in row-major order, all of one size)."""
    from PIL import Image

    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill a {rows} x {cols} grid")
    h, w = images.shape[1:3]
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(Image.fromarray(im), ((i % cols) * w, (i // cols) * h))
    return grid


class Validator:
    """Samples the validation prompts x seeds at the configured steps and records them (main process)."""

    def __init__(self, cfg: Any, resolution: int, out_dir: Path):
        self.cfg = cfg
        self.resolution = cfg.resolution or resolution
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prompts = resolve_prompts(cfg, self.out_dir)
        if not self.prompts:
            raise ValueError(f"validation.prompt_set {cfg.prompt_set!r} holds no prompts")
        from instructengine.runs import atomic_write_text

        atomic_write_text(self.out_dir / "prompts.json", json.dumps(
            {"prompts": self.prompts, "seeds": list(cfg.seeds), "num_inference_steps": cfg.num_inference_steps,
             "guidance_scale": cfg.guidance_scale, "resolution": self.resolution,
             "grid": "one row per prompt, one column per seed"}, indent=1))

    def due(self, step: int, total_steps: int) -> bool:
        if step == 0:
            return self.cfg.at_start
        return step % self.cfg.every_n_steps == 0 or step == total_steps

    def sample(self, adapter: ModelAdapter, unet: Any, autocast: Callable[[], ContextManager[Any]] = nullcontext,
               dtype: torch.dtype | None = None) -> np.ndarray:
        """The images of every (prompt, seed), row-major (prompt by prompt), in batches of ``batch_size``."""
        cfg = self.cfg
        pairs = [(p, s) for p in self.prompts for s in cfg.seeds]
        out = []
        for i in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[i:i + cfg.batch_size]
            out.append(sample_images(adapter, unet, [p for p, _ in chunk], [s for _, s in chunk],
                                     num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                                     resolution=self.resolution, autocast=autocast, dtype=dtype))
        return np.concatenate(out)

    def save(self, step: int, images: np.ndarray) -> Path:
        from instructengine.runs import atomic_write_bytes
        from instructengine.generation import png_bytes

        grid = image_grid(images, len(self.prompts), len(self.cfg.seeds))
        return atomic_write_bytes(self.out_dir / f"step-{step:06d}.png", png_bytes(grid))

    def log(self, trackers: Sequence[Any], step: int, images: np.ndarray) -> None:
        """Hand the images to accelerate's trackers: tensorboard gets one NHWC batch, wandb one
        ``wandb.Image`` per image with its prompt and seed as the caption."""
        captions = [f"{p} (seed {s})" for p in self.prompts for s in self.cfg.seeds]
        for tracker in trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation": images}, step=step, dataformats="NHWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({"validation": [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step)
