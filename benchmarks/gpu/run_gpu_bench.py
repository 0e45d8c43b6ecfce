"""Full-size SD1.5 / SDXL on one GPU: the CV-DPO step and candidate generation, with MFU and peak memory.

One command, sized for a lent device (not yet run on one: the estimate from the counted FLOPs is a
few minutes on an H100/H200-class GPU; ``--budget-s`` (default 360) stops starting new measurements
once that much time has passed, so the command ends within about 8 minutes)::

    python benchmarks/gpu/run_gpu_bench.py --out $OUT/gpu_bench.json           # on the GPU machine
    python benchmarks/gpu/run_gpu_bench.py --tiny --out /tmp/gpu_tiny.json     # CPU smoke, tiny twins

What it builds: the official SD1.5 and SDXL architectures (``configs.json``: U-Net, VAE, text
encoder(s) and scheduler transcribed from the published config.json files; random weights, no hub),
bf16 weights and autocast, PyTorch SDPA attention (diffusers' default ``AttnProcessor2_0``), the
byte-level tokenizer of ``instructengine.train.tiny`` padded to 77 tokens (the text encoders' cost is
that of 77 tokens whatever the vocabulary). What it measures:

* ``peak``: the bf16 matmul throughput of this chip (8192^3 ``torch.mm`` loop), the denominator of MFU;
* ``train``: the CV-DPO step of ``benchmarks/cv_dpo_step.py`` (ours: ``instructengine.train.steps.
  combination_errors``, fused / eight calls; the diffusers-example-style step as written and with our
  caches; gradient checkpointing; LoRA and full fine-tuning) at full size, each with samples/s, peak
  memory (``torch.cuda.max_memory_allocated``), FLOPs per step counted with
  ``torch.utils.flop_counter.FlopCounterMode`` and MFU = FLOPs / step time / measured peak (for a
  checkpointed variant the FLOPs of the same step without checkpointing: model FLOPs, not hardware
  FLOPs);
* ``generate``: SDXL candidates through our generator (``DiffusersGenerator.generate``, the candidates
  stage's call: 2 instructions x 4 candidates in one call) against the best throughput the plain
  ``StableDiffusionXLPipeline.__call__`` reaches over batch sizes 1, 2, 4, 8.

Targets (issue "performance"): CV-DPO fused step on the SDXL U-Net >= 35% MFU (goal 45%) and >= 2x the
diffusers-example-style step per sample; SDXL LoRA training within 80 GB at B >= 4 samples (16 U-Net
inputs); batched SDXL generation >= 0.9x the plain pipeline's best. The result JSON has a
``targets`` section saying which were met.

The machine lent for this has torch, transformers, accelerate and peft but not diffusers or pydantic,
and no package registry: wheels fetched beforehand by ``benchmarks/gpu/fetch_wheels.sh`` into
``benchmarks/gpu/wheels/`` are unpacked into a temporary folder and put on ``sys.path`` when those
packages are missing (see docs/performance.md for the exact ``run`` call).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: top-level module -> wheel distribution name prefix, for what the GPU machine may lack
WHEELS = {"diffusers": "diffusers", "pydantic": "pydantic", "pydantic_core": "pydantic_core",
          "annotated_types": "annotated_types", "typing_inspection": "typing_inspection",
          "typing_extensions": "typing_extensions"}


def bootstrap(wheel_dir: Path = HERE / "wheels") -> list[str]:
    """Put ``src/`` and ``benchmarks/`` on the path; unpack the wheels of missing packages (pure
    Python ones, and binary ones built for this Python) into a temporary folder on ``sys.path``.
    Returns the wheels unpacked."""
    for p in (ROOT / "src", ROOT / "benchmarks"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    missing = [m for m in WHEELS if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    if "pydantic" in missing and "typing_extensions" in WHEELS and "typing_extensions" not in missing:
        missing.append("typing_extensions")  # pydantic 2.14 needs typing_extensions >= 4.16, newer than torch's
    target = Path(tempfile.gettempdir()) / f"ie_gpu_site_py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    used = []
    for module in missing:
        found = [w for w in sorted(wheel_dir.glob(f"{WHEELS[module]}-*.whl"))
                 if w.name.endswith("-none-any.whl") or f"-{tag}-" in w.name]
        if not found:
            continue
        with zipfile.ZipFile(found[-1]) as z:
            z.extractall(target)
        used.append(found[-1].name)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    still = [m for m in ("diffusers",) if importlib.util.find_spec(m) is None]
    if still:
        raise SystemExit(f"{still} not importable and no matching wheel in {wheel_dir}; run "
                         "benchmarks/gpu/fetch_wheels.sh on a machine with a package registry first")
    return used


# ------------------------------------------------------------------------------------------ building


def load_configs(tiny: bool) -> dict[str, Any]:
    raw = json.loads((HERE / "configs.json").read_text())
    return {k: raw[f"tiny_{k}" if tiny else k] for k in ("sd15", "sdxl")}


def build_adapter(kind: str, cfg: dict[str, Any], device: Any, dtype: Any, unet_dtype: Any) -> Any:
    """Our adapter over random-weight components built from the configs, directly on ``device``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from instructengine.train.models import SD15Adapter, SDXLAdapter
    from instructengine.train.tiny import tiny_clip_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg["unet"]).to(unet_dtype)
        vae = AutoencoderKL(**cfg["vae"]).to(dtype)
        te = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])).to(dtype) if kind == "sdxl" else None
    sched = DDPMScheduler.from_config(cfg["scheduler"])  # keys of other schedulers are ignored
    tok = tiny_clip_tokenizer(max_length=77)
    if kind == "sd15":
        adapter = SD15Adapter(unet, sched, vae, te, tok)
    else:
        adapter = SDXLAdapter(unet, sched, vae, te, te2, tok, tiny_clip_tokenizer(max_length=77))
    return adapter.to(device, dtype, dtype)


def attention_processors(unet: Any) -> list[str]:
    return sorted({type(p).__name__ for p in unet.attn_processors.values()})


# ------------------------------------------------------------------------------------------ measuring


class Clock:
    def __init__(self, device: Any):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 1e9, 2) if self.cuda else None


def matmul_peak(device: Any, n: int, iters: int, clock: Clock) -> dict[str, Any]:
    """Measured bf16 matmul TFLOP/s (n x n x n ``torch.mm``, the best of 3 timed loops)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        clock.sync()
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0))
    return {"n": n, "iters": iters, "tflops": float(f"{best / 1e12:.4g}")}


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn: Callable[[], Any], warmup: int, steps: int, clock: Clock) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        clock.sync()
        t0 = time.perf_counter()
        fn()
        clock.sync()
        out.append(time.perf_counter() - t0)
    return out


def _is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError"


# ------------------------------------------------------------------------------------------ train


#: variant -> (training mode, step kind, cached encodings, gradient checkpointing)
TRAIN_VARIANTS: dict[str, tuple[str, str, bool, bool]] = {
    "lora_fused": ("lora", "fused", True, False),
    "lora_naive8": ("lora", "naive", True, False),
    "lora_example": ("lora", "example", False, False),
    "lora_example_cached": ("lora", "example", True, False),
    "lora_fused_gc": ("lora", "fused", True, True),
    "lora_fused_channels_last": ("lora", "fused", True, False),  # + U-Net in channels-last memory format
    "full_fused": ("full", "fused", True, False),
    "full_example": ("full", "example", False, False),
}


def bench_train(kind: str, cfg: dict[str, Any], args: argparse.Namespace, device: Any, clock: Clock,
                peak_tflops: float, deadline: float) -> dict[str, Any]:
    import torch

    from cv_dpo_step import example_style_loss, make_batch, policy_and_reference
    from instructengine.train.losses import cross_validation_dpo_loss
    from instructengine.train.steps import Encoder, combination_errors

    B = args.batch_sdxl if kind == "sdxl" else args.batch_sd15
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    out: dict[str, Any] = {"batch_samples": B, "unet_inputs": 4 * B, "variants": {}}
    adapter = build_adapter(kind, cfg, device, dtype, torch.float32)
    out["unet_params_M"] = round(sum(p.numel() for p in adapter.unet.parameters()) / 1e6, 2)
    out["latent"] = [4, cfg["unet"]["sample_size"], cfg["unet"]["sample_size"]]
    out["attention_processors"] = attention_processors(adapter.unet)
    tmp = tempfile.TemporaryDirectory()
    batch, data_cfg = make_batch(Path(tmp.name), B, cfg["resolution"], kind)
    cached = Encoder(adapter, cache_text=True, cache_latents=True)
    cached.precompute([t for ts in batch["texts"] for t in ts], [p for ps in batch["images"] for p in ps], data_cfg,
                      batch=4)
    uncached = Encoder(adapter)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    names = [v for v in args.train_variants.split(",") if v]
    by_mode: dict[str, list[str]] = {}
    for name in names:
        by_mode.setdefault(TRAIN_VARIANTS[name][0], []).append(name)
    base_unet = adapter.unet
    for mode, group in by_mode.items():
        if time.perf_counter() > deadline:
            out["variants"].update({n: {"skipped": "time budget"} for n in group})
            continue
        # one model per mode, built in place (LoRA) or copied (full: fp32 master + bf16 reference)
        policy = reference = opt = None
        try:
            policy, reference, params = policy_and_reference(base_unet, mode, args.rank, False, dtype,
                                                             copy_base=mode == "full")
            opt = torch.optim.AdamW(params, lr=1e-6, fused=device.type == "cuda" and args.fused_adam)
            for name in group:
                _, step, use_cache, gc_on = TRAIN_VARIANTS[name]
                if time.perf_counter() > deadline:
                    out["variants"][name] = {"skipped": "time budget"}
                    continue
                if gc_on:
                    policy.enable_gradient_checkpointing()
                channels_last = name.endswith("_channels_last")
                if channels_last:  # what TrainConfig.channels_last does
                    policy.to(memory_format=torch.channels_last)
                enc = cached if use_cache else uncached
                gen = torch.Generator().manual_seed(0)

                def run(enc=enc, gen=gen, step=step, use_cache=use_cache) -> None:
                    if step == "example":
                        loss = example_style_loss(adapter, enc, policy, reference, batch, gen, args.beta, use_cache,
                                                  autocast=autocast)
                    else:
                        m, r = combination_errors(adapter, enc, policy, reference, batch, "quad", gen,
                                                  fused=step == "fused", autocast=autocast)
                        loss = cross_validation_dpo_loss(m, r, args.beta).mean()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                row: dict[str, Any] = {"train": mode, "step": step, "cached": use_cache, "grad_ckpt": gc_on,
                                       "channels_last": channels_last}
                try:
                    clock.reset_peak()
                    times = timed(run, args.warmup, args.steps, clock)
                    row["peak_memory_GB"] = clock.peak_gb()
                    row["flops_counted"] = count_flops(run)
                    med = statistics.median(times)
                    row.update(median_step_s=round(med, 4), samples_per_s=round(B / med, 3),
                               step_s=[round(x, 4) for x in times])
                except Exception as err:  # noqa: BLE001 - an OOM variant is a result, not a crash
                    if not _is_oom(err):
                        raise
                    row.update(error="out of memory", peak_memory_GB=clock.peak_gb())
                finally:
                    if gc_on:
                        policy.disable_gradient_checkpointing()
                    if channels_last:
                        policy.to(memory_format=torch.contiguous_format)
                    opt.zero_grad(set_to_none=True)
                    gc.collect()
                out["variants"][name] = row
        finally:
            if mode == "lora" and policy is not None:
                policy.delete_adapters(policy.active_adapters())
            del policy, reference, opt
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    tmp.cleanup()
    # model FLOPs: a checkpointed variant is charged the FLOPs of the same step without recompute
    for name, row in out["variants"].items():
        if "median_step_s" not in row:
            continue
        twin = out["variants"].get(name.replace("_gc", ""), {}) if row["grad_ckpt"] else row  # lora_fused_gc -> lora_fused
        model_flops = twin.get("flops_counted", row["flops_counted"])
        row["model_flops_per_step_T"] = float(f"{model_flops / 1e12:.4g}")
        row["mfu"] = round(model_flops / row["median_step_s"] / (peak_tflops * 1e12), 4) if peak_tflops else None
    v = out["variants"]
    if "median_step_s" in v.get("lora_fused", {}) and "median_step_s" in v.get("lora_example", {}):
        out["lora_fused_speedup_vs_example"] = round(v["lora_example"]["median_step_s"] / v["lora_fused"]["median_step_s"], 3)
    del adapter, base_unet, cached, uncached
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------ generate


def bench_generate(kind: str, cfg: dict[str, Any], args: argparse.Namespace, device: Any, clock: Clock,
                   deadline: float) -> dict[str, Any]:
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from instructengine.generation.base import GeneratorConfig
    from instructengine.generation.diffusers_pipeline import DiffusersGenerator

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    adapter = build_adapter(kind, cfg, device, dtype, dtype)
    sched = EulerDiscreteScheduler.from_config(cfg["scheduler"])  # SDXL's shipped scheduler class
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=adapter.vae, text_encoder=adapter.text_encoders[0],
                                         text_encoder_2=adapter.text_encoders[1], tokenizer=adapter.tokenizers[0],
                                         tokenizer_2=adapter.tokenizers[1], unet=adapter.unet, scheduler=sched)
    else:
        pipe = StableDiffusionPipeline(vae=adapter.vae, text_encoder=adapter.text_encoder, tokenizer=adapter.tokenizer,
                                       unet=adapter.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    res = cfg["resolution"]
    steps = args.gen_steps
    prompts = ["a red vintage car parked by the sea", "two blue birds on a wire"]
    out: dict[str, Any] = {"resolution": res, "denoising_steps": steps, "guidance_scale": 5.0, "plain": {}}

    def plain(bs: int) -> None:
        with torch.no_grad():
            pipe(prompt=[prompts[i % 2] for i in range(bs)], num_inference_steps=steps, guidance_scale=5.0,
                 height=res, width=res, output_type="np")

    for bs in [int(x) for x in args.gen_batches.split(",")]:
        if time.perf_counter() > deadline:
            out["plain"][str(bs)] = {"skipped": "time budget"}
            continue
        try:
            clock.reset_peak()
            t = timed(lambda: plain(bs), 1, args.gen_rounds, clock)
            out["plain"][str(bs)] = {"median_s": round(statistics.median(t), 4),
                                     "images_per_s": round(bs / statistics.median(t), 4), "peak_memory_GB": clock.peak_gb()}
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            out["plain"][str(bs)] = {"error": "out of memory"}
    gcfg = GeneratorConfig(kind="diffusers", model="random-weights", num_inference_steps=steps, guidance_scale=5.0,
                           height=res, width=res, device=str(device), dtype={"bf16": "bfloat16", "fp32": "float32"}[args.dtype])
    ours = DiffusersGenerator(gcfg, pipe=pipe)
    n_instr, n_cand = 2, args.gen_candidates
    call_prompts = [prompts[i] for i in range(n_instr) for _ in range(n_cand)]
    seeds = list(range(len(call_prompts)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random weights: NaN pixels in the uint8 cast
        if time.perf_counter() < deadline:
            clock.reset_peak()
            t = timed(lambda: ours.generate(call_prompts, seeds), 1, args.gen_rounds, clock)
            out["ours"] = {"images_per_call": len(seeds), "instructions_per_call": n_instr, "n_candidates": n_cand,
                           "median_s": round(statistics.median(t), 4),
                           "images_per_s": round(len(seeds) / statistics.median(t), 4), "peak_memory_GB": clock.peak_gb()}
        else:
            out["ours"] = {"skipped": "time budget"}
    best = max((v["images_per_s"] for v in out["plain"].values() if "images_per_s" in v), default=None)
    out["plain_best_images_per_s"] = best
    if best and "images_per_s" in out["ours"]:
        out["ours_vs_plain_best"] = round(out["ours"]["images_per_s"] / best, 3)
    del pipe, ours, adapter
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------ main


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from the measured numbers (None: not measured)."""
    sdxl = result.get("train", {}).get("sdxl", {}).get("variants", {})
    fused, example = sdxl.get("lora_fused", {}), sdxl.get("lora_example", {})
    best_mfu = max((r.get("mfu") or 0 for k, r in sdxl.items() if k in ("lora_fused", "full_fused", "lora_fused_channels_last")),
                   default=None)
    mem = [r["peak_memory_GB"] for k, r in sdxl.items() if k.startswith("lora_fused") and r.get("peak_memory_GB")
           and "median_step_s" in r]
    gen = result.get("generate", {}).get("sdxl", {})
    speed = (example["median_step_s"] / fused["median_step_s"]) if "median_step_s" in fused and "median_step_s" in example else None
    return {
        "sdxl_fused_mfu": best_mfu, "sdxl_fused_mfu_ge_0.35": None if best_mfu is None else best_mfu >= 0.35,
        "sdxl_fused_vs_example_per_sample": None if speed is None else round(speed, 3),
        "sdxl_fused_vs_example_ge_2": None if speed is None else speed >= 2.0,
        "sdxl_lora_B_samples": result.get("train", {}).get("sdxl", {}).get("batch_samples"),
        "sdxl_lora_min_peak_GB": min(mem) if mem else None,
        "sdxl_lora_fits_80GB": (min(mem) <= 80.0) if mem else None,
        "sdxl_generation_vs_plain_best": gen.get("ours_vs_plain_best"),
        "sdxl_generation_ge_0.9": None if gen.get("ours_vs_plain_best") is None else gen["ours_vs_plain_best"] >= 0.9,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: the tiny twins of configs.json, 1 step each")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--parts", default="train,generate")
    ap.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS))
    ap.add_argument("--batch-sd15", type=int, default=8, help="CV-DPO samples per step on SD1.5 (x4 U-Net inputs)")
    ap.add_argument("--batch-sdxl", type=int, default=4, help="CV-DPO samples per step on SDXL (x4 U-Net inputs)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--beta", type=float, default=2500.0)
    ap.add_argument("--no-fused-adam", dest="fused_adam", action="store_false", help="plain (foreach) AdamW on CUDA")
    ap.add_argument("--gen-models", default="sdxl")
    ap.add_argument("--gen-steps", type=int, default=10)
    ap.add_argument("--gen-batches", default="1,2,4,8", help="batch sizes of the plain pipeline")
    ap.add_argument("--gen-candidates", type=int, default=4, help="candidates per instruction (2 instructions per call)")
    ap.add_argument("--gen-rounds", type=int, default=2)
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--budget-s", type=float, default=360.0, help="start no new measurement after this many seconds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch_sd15 = args.batch_sdxl = 1
        args.warmup, args.steps, args.gen_steps, args.gen_batches, args.gen_candidates, args.gen_rounds = 1, 1, 2, "1,2", 1, 1
        args.matmul_n = 128
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    wheels = bootstrap()
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(int(os.environ.get("IE_BENCH_THREADS", "1")))
    import diffusers

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine

    clock = Clock(device)
    cfgs = load_configs(args.tiny)
    result: dict[str, Any] = {"benchmark": "gpu", "tiny": args.tiny, "device": str(device), "dtype": args.dtype,
                              "diffusers": diffusers.__version__, "wheels_unpacked": wheels, "machine": machine(str(device)),
                              "argv": sys.argv[1:] if argv is None else argv}
    if device.type == "cuda":
        result["gpu"] = {"name": torch.cuda.get_device_name(), "memory_GB": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
                         "capability": list(torch.cuda.get_device_capability())}
    result["peak"] = matmul_peak(device, args.matmul_n, 20 if device.type == "cuda" else 2, clock)
    print(f"[gpu] bf16 matmul peak {result['peak']['tflops']} TFLOP/s", flush=True)
    parts = args.parts.split(",")
    if "train" in parts:
        result["train"] = {}
        for kind in args.models.split(","):
            t0 = time.perf_counter()
            try:
                result["train"][kind] = bench_train(kind, cfgs[kind], args, device, clock, result["peak"]["tflops"], deadline)
            except Exception as err:  # noqa: BLE001 - keep what the other parts measured
                result["train"][kind] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
                if args.tiny:
                    raise
            result["train"][kind]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"[gpu] train {kind}: {json.dumps(result['train'][kind].get('variants', result['train'][kind]))[:1500]}",
                  flush=True)
            _write(result, args.out)
    if "generate" in parts:
        result["generate"] = {}
        for kind in args.gen_models.split(","):
            t0 = time.perf_counter()
            try:
                result["generate"][kind] = bench_generate(kind, cfgs[kind], args, device, clock, deadline)
            except Exception as err:  # noqa: BLE001
                result["generate"][kind] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
                if args.tiny:
                    raise
            result["generate"][kind]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"[gpu] generate {kind}: {json.dumps(result['generate'][kind])[:800]}", flush=True)
            _write(result, args.out)
    result["targets"] = targets(result)
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result["targets"], indent=1))
    _write(result, args.out)
    return result


def _write(result: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
