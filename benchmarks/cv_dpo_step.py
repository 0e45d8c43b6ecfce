"""The CV-DPO training step, ours against the obvious alternatives, side by side in one run.

Every variant takes the same micro-batch of B cross-validation samples (x1, x2, y1, y2), computes the
cross-validation DPO loss of the same four (instruction, image) combinations with one noise and one
timestep per sample, back-propagates, clips and takes one AdamW step:

* ``fused``           -- ours (``instructengine.train.steps.combination_errors``): one policy U-Net call on
                         the 4B combinations, one reference call (no gradient); text and latents cached.
* ``naive8``          -- ours with ``fused=False``: eight separate U-Net calls of B (four policy, four reference).
* ``example``         -- the step written the way diffusers' Diffusion-DPO SDXL example writes it
                         (examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py): VAE-encode
                         the images and encode the prompts inside the step, then per image triple concatenate
                         winner/loser along the batch, run the U-Net on 2B, the reference (LoRA:
                         ``disable_adapters()``) under no_grad on the same 2B, and build the loss from the
                         error differences; the two triples of a CV-DPO sample go in one log-sigmoid.
* ``example_cached``  -- the same with the encodings taken from our caches (only the call structure differs).
* ``fused_uncached``  -- ours with the text/latent caches off (VAE and text encoders run every step).
* ``fused_gc``        -- ours with gradient checkpointing.
* ``full_fused`` / ``full_example`` -- full fine-tuning (fp32 master weights, a frozen reference copy)
                         instead of LoRA.

    python benchmarks/cv_dpo_step.py                      # small SD1.5-layout U-Net, CPU, fp32
    python benchmarks/cv_dpo_step.py --model sdxl --batch 4 --rounds 5
    python benchmarks/cv_dpo_step.py --tiny --out /tmp/cv.json   # seconds; what the test runs

Models: random SD1.5/SDXL-layout components (``instructengine.train.tiny``: the real diffusers and
transformers classes); ``--size small`` (default) widens the U-Net to (32, 64) channels on 32x32 latents
so the U-Net, not Python, dominates on a CPU; ``--tiny`` keeps the tiny test U-Net on 8x8 latents.
Full-size SD1.5/SDXL on a GPU: ``benchmarks/gpu/run_gpu_bench.py``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, interleaved, machine, median, table  # noqa: E402

#: name -> (training mode, step kind, cached encodings, gradient checkpointing)
VARIANTS: dict[str, tuple[str, str, bool, bool]] = {
    "fused": ("lora", "fused", True, False),
    "naive8": ("lora", "naive", True, False),
    "example": ("lora", "example", False, False),
    "example_cached": ("lora", "example", True, False),
    "fused_uncached": ("lora", "fused", False, False),
    "fused_gc": ("lora", "fused", True, True),
    "full_fused": ("full", "fused", True, False),
    "full_example": ("full", "example", False, False),
}


def build_components(kind: str, size: str, seed: int = 0) -> dict[str, Any]:
    """Tiny SD1.5/SDXL-layout components; ``size='small'`` widens the U-Net (same layout, same conditioning)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from instructengine.train.tiny import tiny_components

    comps = tiny_components(kind, seed=seed)
    if size == "small":
        torch.manual_seed(seed)
        cfg = dict(comps["unet"].config)
        cfg.update(block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=8, sample_size=32,
                   layers_per_block=2)
        comps["unet"] = UNet2DConditionModel.from_config(cfg)
    comps["scheduler"] = DDPMScheduler.from_config(comps["scheduler"].config)
    return comps


def build_adapter(kind: str, comps: dict[str, Any]) -> Any:
    from instructengine.train.models import SD15Adapter, SDXLAdapter

    if kind == "sd15":
        return SD15Adapter(comps["unet"], comps["scheduler"], comps["vae"], comps["text_encoder"], comps["tokenizer"])
    return SDXLAdapter(comps["unet"], comps["scheduler"], comps["vae"], comps["text_encoder"], comps["text_encoder_2"],
                       comps["tokenizer"], comps["tokenizer_2"])


def policy_and_reference(base_unet: torch.nn.Module, mode: str, rank: int, gc: bool,
                         weight_dtype: torch.dtype = torch.float32, copy_base: bool = True) -> tuple[Any, Any, list]:
    """As the trainer sets them up (``Trainer._setup_model``): LoRA adapters (fp32) on a frozen U-Net in
    ``weight_dtype`` (reference = the same U-Net with the adapters disabled), or a fully trainable fp32
    U-Net with a frozen copy in ``weight_dtype`` as reference. Returns (policy, reference, params)."""
    unet = copy.deepcopy(base_unet) if copy_base else base_unet
    if mode == "lora":
        unet.to(dtype=weight_dtype)
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()

        def reference(*args: Any, **kwargs: Any) -> Any:
            unet.disable_adapters()
            try:
                return unet(*args, **kwargs)
            finally:
                unet.enable_adapters()
    else:
        unet.requires_grad_(True).float()
        reference = copy.deepcopy(unet).requires_grad_(False).eval().to(dtype=weight_dtype)
    if gc:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, reference, [p for p in unet.parameters() if p.requires_grad]


def example_style_loss(adapter: Any, encoder: Any, policy: Any, reference: Any, batch: dict[str, Any],
                       generator: torch.Generator, beta: float, cached: bool,
                       autocast: Callable[[], Any] = nullcontext) -> torch.Tensor:
    """The CV-DPO loss computed the way the diffusers Diffusion-DPO SDXL example writes its step.

    Transcribed from that script's training loop: (1) pixels -> VAE latents ``* scaling_factor`` and the
    prompts -> text embeddings, inside the step (``cached``: from our caches instead); (2) one noise and
    one timestep per item, repeated over the concatenated winner/loser batch; (3) per image triple
    ``model_pred = unet(noisy, t, prompt_embeds, added_cond_kwargs=...)`` on 2B, per-sample MSE, chunk
    into w/l, ``model_diff = w - l``; the reference the same under ``torch.no_grad()`` (LoRA:
    ``disable_adapters()`` around it); (4) ``-logsigmoid(-beta * sum over triples (model_diff - ref_diff))``.
    Deviations, for an exact comparison with ours: the posterior is sampled with draws from
    ``generator`` in our order (the example calls ``latent_dist.sample()``), the noise is shared by all
    four combinations of a sample (CV-DPO needs it; the example shares it within its pair), and the
    loss is the CV-DPO one (the example's has one triple and writes ``-0.5 * beta_dpo``).
    """
    sched = adapter.noise_scheduler
    device = adapter.device
    B = len(batch["texts"][0])
    latents, micros = [], []
    for k in range(2):
        if cached:
            mean, std, micro = encoder.image(batch, k)
        else:
            with torch.no_grad():
                dist = adapter.vae.encode(batch["pixels"][k].to(device, adapter.vae.dtype)).latent_dist
            mean, std, micro = dist.mean.float(), dist.std.float(), batch["micro"][k]
        eps = torch.randn(mean.shape, generator=generator).to(device)
        latents.append(adapter.latents_from_dist(mean, std, eps))
        micros.append(micro)
    noise = torch.randn(latents[0].shape, generator=generator).to(device)
    t = torch.randint(0, sched.config.num_train_timesteps, (B,), generator=generator, dtype=torch.long).to(device)
    texts = [encoder.text(batch["texts"][j]) if cached else adapter.encode_text(batch["texts"][j]) for j in range(2)]
    texts = [{k: v.to(adapter.weight_dtype) for k, v in c.items()} for c in texts]
    inside = 0.0
    for j, (w, l) in enumerate(((0, 1), (1, 0))):  # x1: y1 > y2; x2: y2 > y1
        noisy = sched.add_noise(torch.cat([latents[w], latents[l]]), noise.repeat(2, 1, 1, 1), t.repeat(2))
        target = noise.repeat(2, 1, 1, 1)
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(torch.cat([latents[w], latents[l]]), target, t.repeat(2))
        cond = {k: v.repeat(2, *[1] * (v.ndim - 1)) for k, v in texts[j].items()}
        micro = torch.cat([micros[w], micros[l]]) if micros[0] is not None else None
        kwargs = adapter.unet_kwargs(cond, micro)
        with autocast():
            model_pred = policy(noisy, t.repeat(2), **kwargs).sample
        model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        model_losses = model_losses.mean(dim=list(range(1, len(model_losses.shape))))
        model_losses_w, model_losses_l = model_losses.chunk(2)
        model_diff = model_losses_w - model_losses_l
        with torch.no_grad():
            with autocast():
                ref_preds = reference(noisy, t.repeat(2), **kwargs).sample
            ref_loss = F.mse_loss(ref_preds.float(), target.float(), reduction="none")
            ref_loss = ref_loss.mean(dim=list(range(1, len(ref_loss.shape))))
            ref_losses_w, ref_losses_l = ref_loss.chunk(2)
            ref_diff = ref_losses_w - ref_losses_l
        inside = inside + (model_diff - ref_diff)
    return -F.logsigmoid(-beta * inside).mean()


def make_batch(root: Path, B: int, resolution: int, kind: str) -> tuple[dict[str, Any], SimpleNamespace]:
    """B cross-validation samples as PNG files (so the latent cache reads them as the trainer does)
    and the collated micro-batch the trainer's data stream hands to a step."""
    import numpy as np
    from PIL import Image

    from instructengine.train.data import load_image

    rng = np.random.default_rng(0)
    words = ["a red square", "a blue bar", "two green squares", "a yellow bar", "one red bar", "a green square"]
    paths = [[], []]
    for i in range(B):
        for k in range(2):
            p = root / f"{i}_{k}.png"
            Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(p)
            paths[k].append(str(p))
    loaded = [[load_image(p, resolution) for p in paths[k]] for k in range(2)]
    batch = {
        "texts": [[words[i % 6] for i in range(B)], [words[(i + 3) % 6] for i in range(B)]],
        "images": paths,
        "pixels": [torch.stack([x for x, _ in loaded[k]]) for k in range(2)],
        "micro": [torch.stack([m for _, m in loaded[k]]) if kind == "sdxl" else None for k in range(2)],
    }
    return batch, SimpleNamespace(resolution=resolution)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    ap.add_argument("--batch", type=int, default=4, help="cross-validation samples per step (B)")
    ap.add_argument("--rounds", type=int, default=4, help="timed steps per variant (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--beta", type=float, default=2500.0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU more threads stall in OpenMP waits)")
    ap.add_argument("--tiny", action="store_true", help="CI size: tiny U-Net, B=2, 1 timed round")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.rounds, args.warmup = "tiny", 2, 1, 1
    torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    from instructengine.train.losses import cross_validation_dpo_loss
    from instructengine.train.steps import Encoder, combination_errors

    comps = build_components(args.model, args.size)
    adapter = build_adapter(args.model, comps).to("cpu", torch.float32, torch.float32)
    resolution = adapter.unet.config.sample_size * 2  # the tiny VAE halves the side
    tmp = tempfile.TemporaryDirectory()
    batch, data_cfg = make_batch(Path(tmp.name), args.batch, resolution, args.model)
    cached = Encoder(adapter, cache_text=True, cache_latents=True)
    cached.precompute([t for ts in batch["texts"] for t in ts], [p for ps in batch["images"] for p in ps], data_cfg)
    uncached = Encoder(adapter)

    setups: dict[tuple[str, bool], tuple[Any, Any, list, Any]] = {}
    fns: dict[str, Callable[[], None]] = {}
    for name in names:
        mode, step, use_cache, gc = VARIANTS[name]
        if (mode, gc) not in setups:
            policy, reference, params = policy_and_reference(adapter.unet, mode, args.rank, gc)
            setups[(mode, gc)] = (policy, reference, params, torch.optim.AdamW(params, lr=1e-6))
        policy, reference, params, opt = setups[(mode, gc)]
        enc = cached if use_cache else uncached
        gen = torch.Generator().manual_seed(0)

        def run(policy=policy, reference=reference, params=params, opt=opt, enc=enc, gen=gen, step=step,
                use_cache=use_cache) -> None:
            if step == "example":
                loss = example_style_loss(adapter, enc, policy, reference, batch, gen, args.beta, use_cache)
            else:
                m, r = combination_errors(adapter, enc, policy, reference, batch, "quad", gen, fused=step == "fused")
                loss = cross_validation_dpo_loss(m, r, args.beta).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns[name] = run

    times = interleaved(fns, args.rounds, args.warmup)
    tmp.cleanup()
    base = names[0]
    rows = []
    for name in names:
        mode, step, use_cache, gc = VARIANTS[name]
        med = median(times[name])
        rows.append({"variant": name, "train": mode, "step": step, "cached": use_cache, "grad_ckpt": gc,
                     "median_step_s": round(med, 5), "samples_per_s": round(args.batch / med, 3),
                     f"time_vs_{base}": round(med / median(times[base]), 3)})
    result = {
        "benchmark": "cv_dpo_step", "model": f"{args.model} ({args.size})",
        "unet_params_M": round(sum(p.numel() for p in adapter.unet.parameters()) / 1e6, 3),
        "latent_side": adapter.unet.config.sample_size, "batch_samples": args.batch, "unet_inputs_per_call": 4 * args.batch,
        "rounds": args.rounds, "threads": args.threads, "dtype": "float32",
        "variants": rows, "all_step_s": {k: [round(x, 5) for x in v] for k, v in times.items()},
        "machine": machine(),
    }
    text = table(f"CV-DPO step, {args.model} ({args.size}), B={args.batch}, {args.rounds} rounds", rows,
                 ["variant", "train", "cached", "grad_ckpt", "median_step_s", "samples_per_s", f"time_vs_{base}"])
    return finish(result, args.out, text, args.quiet)


if __name__ == "__main__":
    main()
