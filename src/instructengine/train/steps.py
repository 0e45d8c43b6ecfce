"""One micro-batch of training: denoising errors of (instruction, image) combinations, and ReFL.

:func:`combination_errors` is the heart of every preference method. For a micro-batch of B items
with layout ``quad`` it evaluates the U-Net on the four combinations ``[x1, x1, x2, x2] x
[y1, y2, y2, y1]`` with ONE noise tensor and ONE timestep per item shared by all four, and returns
``(B, 4)`` float32 errors for the policy and, with no gradient, for the reference. ``fused=True``
does this in one policy call and one reference call on a 4B batch; ``fused=False`` makes one call
per combination (eight calls; only for benchmarks -- the numbers are the same up to float
rounding).

All random draws (latent sampling, noise, timesteps, caption dropout, ReFL's stop step and
starting noise) come from one ``torch.Generator`` on the CPU, in a fixed order, so a resumed run
that restores the generator reproduces the draws exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch

from instructengine.train.losses import LAYOUTS, per_sample_mse
from instructengine.train.models import Cond, ModelAdapter, cat_cond

__all__ = [
    "Encoder",
    "caption_dropout_mask",
    "combination_errors",
    "predicted_original",
    "refl_loss",
    "sample_timesteps",
    "training_target",
]


class Encoder:
    """Text and image encoding for the trainer, with optional caches (filled by :meth:`precompute`).

    Caches hold per-prompt text conditioning and per-image latent distributions (mean, std) and
    SDXL micro-conditioning on the CPU; values are identical to the uncached path.
    """

    def __init__(self, adapter: ModelAdapter, cache_text: bool = False, cache_latents: bool = False):
        self.adapter = adapter
        self.cache_text = cache_text
        self.cache_latents = cache_latents
        self._text: dict[str, Cond] = {}
        self._latent: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._null: Cond | None = None

    def precompute(self, prompts: list[str], images: list[str], data_cfg: Any, batch: int = 16) -> None:
        """Fill the enabled caches for these distinct prompts and image paths (centre-cropped, unflipped)."""
        from instructengine.train.data import load_image

        if self.cache_text:
            todo = [p for p in dict.fromkeys(prompts) if p not in self._text]
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                cond = self.adapter.encode_text(chunk)
                for j, p in enumerate(chunk):
                    self._text[p] = {k: v[j:j + 1].cpu() for k, v in cond.items()}
        if self.cache_latents:
            todo = [p for p in dict.fromkeys(images) if p not in self._latent]
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                loaded = [load_image(p, data_cfg.resolution, True, False) for p in chunk]
                mean, std = self.adapter.latent_dist(torch.stack([x for x, _ in loaded]))
                for j, p in enumerate(chunk):
                    self._latent[p] = (mean[j:j + 1].cpu(), std[j:j + 1].cpu(), loaded[j][1][None])

    def text(self, prompts: list[str]) -> Cond:
        if not self.cache_text:
            return self.adapter.encode_text(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            self.precompute(missing, [], None)
        dev = self.adapter.device
        return cat_cond([{k: v.to(dev) for k, v in self._text[p].items()} for p in prompts])

    def null(self, n: int) -> Cond:
        if self._null is None:
            self._null = self.adapter.null_text(1)
        return {k: v.expand(n, *v.shape[1:]) for k, v in self._null.items()}

    def image(self, batch: dict[str, Any], slot: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, std, micro) of image slot ``slot`` of a collated batch."""
        if self.cache_latents:
            rows = [self._latent[p] for p in batch["images"][slot]]
            dev = self.adapter.device
            return (torch.cat([r[0] for r in rows]).to(dev), torch.cat([r[1] for r in rows]).to(dev),
                    torch.cat([r[2] for r in rows]))
        mean, std = self.adapter.latent_dist(batch["pixels"][slot])
        return mean, std, batch["micro"][slot]


def sample_timesteps(n: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` integer timesteps uniform in [low, high) (timestep VALUES of the training schedule)."""
    return torch.randint(low, high, (n,), generator=generator, dtype=torch.long)


def training_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The regression target: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; expected 'epsilon' or 'v_prediction'")


def caption_dropout_mask(batch: int, slots: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """``(batch, slots)`` bool mask of instructions to replace by the unconditional embedding.

    With two or more instruction slots (a cross-validation sample) at least one instruction of every
    item is kept: if all were drawn, one of them (chosen at random) is restored. Otherwise both
    instructions would be the same null text, the four errors would pair up exactly and the loss
    would be the constant log 2 with zero gradient.
    """
    draws = torch.rand(batch, slots, generator=generator) < p
    keep = torch.randint(0, slots, (batch,), generator=generator)
    if slots > 1:
        all_dropped = draws.all(dim=1)
        draws[all_dropped, keep[all_dropped]] = False
    return draws


def _unet(model: Callable[..., Any], sample: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    return model(sample, t, **kwargs).sample


def combination_errors(
    adapter: ModelAdapter,
    encoder: Encoder,
    policy: Callable[..., Any],
    reference: Callable[..., Any] | None,
    batch: dict[str, Any],
    layout: str,
    generator: torch.Generator,
    *,
    caption_dropout: float = 0.0,
    timestep_range: tuple[int, int] | None = None,
    fused: bool = True,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Policy (and reference) denoising errors, ``(B, K)`` for the layout's K combinations.

    ``policy``/``reference`` are callables with the U-Net's signature; ``reference`` may be None
    for reference-free losses. One noise and one timestep per item are shared by all combinations.
    """
    n_text, n_img, combos = LAYOUTS[layout]
    sched = adapter.noise_scheduler
    device = adapter.device
    B = len(batch["texts"][0])

    # 1) clean latents of every image slot (sampled from the VAE posterior), fixed draw order
    latents, micros = [], []
    for k in range(n_img):
        mean, std, micro = encoder.image(batch, k)
        if adapter.vae is not None:
            eps = torch.randn(mean.shape, generator=generator).to(device)
            latents.append(adapter.latents_from_dist(mean, std, eps))
        else:
            latents.append(mean)
        micros.append(micro)
    # 2) one noise and one timestep per item, shared by all combinations
    noise = torch.randn(latents[0].shape, generator=generator).to(device)
    low, high = timestep_range or (0, sched.config.num_train_timesteps)
    t = sample_timesteps(B, low, high, generator).to(device)
    noisy = [sched.add_noise(z, noise, t) for z in latents]
    targets = [training_target(sched, z, noise, t) for z in latents]
    # 3) instruction conditioning, with caption dropout that never empties a cross-validation sample
    conds = [encoder.text(batch["texts"][j]) for j in range(n_text)]
    if caption_dropout > 0:
        mask = caption_dropout_mask(B, n_text, caption_dropout, generator).to(device)
        null = encoder.null(B)
        for j in range(n_text):
            conds[j] = {key: torch.where(mask[:, j].view(-1, *[1] * (v.ndim - 1)), null[key].to(v.dtype), v)
                        for key, v in conds[j].items()}
    wdtype = adapter.weight_dtype
    conds = [{k: v.to(wdtype) for k, v in c.items()} for c in conds]

    def run(model: Callable[..., Any]) -> torch.Tensor:
        if fused:
            sample = torch.cat([noisy[i] for _, i in combos])
            kwargs = adapter.unet_kwargs(
                cat_cond([conds[j] for j, _ in combos]),
                torch.cat([micros[i] for _, i in combos]) if micros[0] is not None else None,
            )
            with autocast():
                pred = _unet(model, sample, t.repeat(len(combos)), kwargs)
            err = per_sample_mse(pred, torch.cat([targets[i] for _, i in combos]))
            return err.view(len(combos), B).t()
        cols = []
        for j, i in combos:
            with autocast():
                pred = _unet(model, noisy[i], t, adapter.unet_kwargs(conds[j], micros[i]))
            cols.append(per_sample_mse(pred, targets[i]))
        return torch.stack(cols, dim=1)

    model_err = run(policy)
    ref_err = None
    if reference is not None:
        with torch.no_grad():
            ref_err = run(reference)
    return model_err, ref_err


# ----------------------------------------------------------------------------------------------
# ReFL
# ----------------------------------------------------------------------------------------------


def predicted_original(
    sample: torch.Tensor, model_output: torch.Tensor, timestep: torch.Tensor | int, alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """x0 predicted from x_t at timestep VALUE ``timestep`` (an entry of ``scheduler.timesteps``).

    Indexing ``alphas_cumprod`` by the loop index instead of this value is the bug of the public ReFL
    code: with 40 sampling steps over 1000 training steps, index 35 means t=35 (almost clean) while
    the sample is at t~=100.
    """
    t = torch.as_tensor(timestep, device=alphas_cumprod.device).long().reshape(-1)
    a = alphas_cumprod[t].to(sample.device, torch.float32).view(-1, *[1] * (sample.ndim - 1))
    x, out = sample.float(), model_output.float()
    if prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected 'epsilon' or 'v_prediction'")


def refl_loss(
    adapter: ModelAdapter,
    encoder: Encoder,
    policy: Callable[..., Any],
    prompts: list[str],
    reward_fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
    cfg: Any,
    resolution: int,
    generator: torch.Generator,
    autocast: Callable[[], ContextManager[Any]] = nullcontext,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ReFL on one micro-batch of prompts; returns (loss, metrics).

    Samples with DDIM (no gradient) from pure noise down to a random late step ``k`` drawn in
    ``[cfg.late_step_min, cfg.num_inference_steps - 1]``, makes one guided U-Net call WITH gradient at
    the timestep value ``timesteps[k]``, predicts x0 with that same value, decodes it, and
    back-propagates ``relu(reward_target - reward) * reward_scale``.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(adapter.noise_scheduler.config, clip_sample=cfg.clip_sample)
    sched.set_timesteps(cfg.num_inference_steps)
    timesteps = sched.timesteps
    B = len(prompts)
    device = adapter.device
    k = int(torch.randint(cfg.late_step_min, cfg.num_inference_steps, (1,), generator=generator))
    size = adapter.latent_size(resolution)
    channels = adapter.unet_config.in_channels
    latents = torch.randn((B, channels, size, size), generator=generator).to(device) * sched.init_noise_sigma
    cond = encoder.text(prompts)
    uncond = encoder.null(B)
    guided = cfg.guidance_scale > 1.0
    both = cat_cond([uncond, cond]) if guided else cond
    both = {key: v.to(adapter.weight_dtype) for key, v in both.items()}
    micro = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
    micro = micro.expand(len(both["encoder_hidden_states"]), 6)
    kwargs = adapter.unet_kwargs(both, micro)

    def guided_pred(model: Callable[..., Any], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x, x]) if guided else x
        with autocast():
            out = _unet(model, inp.to(adapter.weight_dtype), t.expand(len(inp)).to(device), kwargs).float()
        if not guided:
            return out
        u, c = out.chunk(2)
        return u + cfg.guidance_scale * (c - u)

    with torch.no_grad():
        for t in timesteps[:k]:
            latents = sched.step(guided_pred(policy, latents, t), t, latents).prev_sample
    t_k = timesteps[k]  # the VALUE, e.g. 100, never the index k
    pred = guided_pred(policy, latents, t_k)
    x0 = predicted_original(latents, pred, t_k, sched.alphas_cumprod, sched.config.prediction_type)
    images = ((adapter.decode(x0) + 1) / 2).clamp(0, 1)
    rewards = reward_fn(images, prompts)
    loss = torch.relu(cfg.reward_target - rewards).mean() * cfg.reward_scale
    return loss, {"reward": rewards.detach().float().mean().item(), "refl_timestep": float(t_k),
                  "refl_step_index": float(k)}
