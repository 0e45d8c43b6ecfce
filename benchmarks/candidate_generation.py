"""Candidate generation: N candidates of several instructions in one batched call vs smaller calls.

The candidates stage (``instructengine.images.candidates.run_candidates``) on the same instructions,
the same seeds and the same diffusers pipeline, in three call layouts, each in a fresh run folder
(PNG files, ledger and table written as in a real run):

* ``batched``          -- ``instructions_per_call=K``: all N candidates of K instructions in ONE
                          pipeline call (K x N images);
* ``per_instruction``  -- ``instructions_per_call=1``: one call of N images per instruction;
* ``per_image``        -- one pipeline call per image (the generator wrapped so that every call of the
                          stage is split into one-image calls).

    python benchmarks/candidate_generation.py                  # small SD1.5-layout pipeline, CPU
    python benchmarks/candidate_generation.py --tiny --out /tmp/gen.json

The pipeline is a diffusers ``StableDiffusionPipeline`` of random SD1.5-layout components
(``cv_dpo_step.build_components``: tiny, or ``--size small``: a wider U-Net on 32x32 latents), saved
to a folder and loaded by the ``diffusers`` generator kind, as a real model would be.
Full-size SDXL on a GPU: ``benchmarks/gpu/run_gpu_bench.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, machine, median, table  # noqa: E402

VARIANTS = ("batched", "per_instruction", "per_image")


class OneImagePerCall:
    """A generator that makes every image in its own call of the wrapped generator."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.calls = 0

    def generate(self, prompts, seeds):
        from instructengine.generation import Generated

        images, flags = [], []
        for p, s in zip(prompts, seeds):
            out = self.inner.generate([p], [s])
            self.calls += 1
            images += out.images
            flags += out.flagged or [False]
        return Generated(images, flags)


class CountingCalls:
    def __init__(self, inner: Any):
        self.inner = inner
        self.fingerprint = inner.fingerprint
        self.calls = 0

    def generate(self, prompts, seeds):
        self.calls += 1
        return self.inner.generate(prompts, seeds)


def save_pipeline(path: Path, size: str) -> Path:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from cv_dpo_step import build_components

    comps = build_components("sd15", size)
    sched = DDIMScheduler.from_config(comps["scheduler"].config)
    pipe = StableDiffusionPipeline(vae=comps["vae"], text_encoder=comps["text_encoder"], tokenizer=comps["tokenizer"],
                                   unet=comps["unet"], scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with torch.no_grad():
        pipe.save_pretrained(path)
    return path


def write_pairs(run_dir: Path, n_pairs: int) -> None:
    import pandas as pd

    from instructengine.instructions.stage import PAIR_COLUMNS

    colours, things = ["red", "blue", "green", "yellow"], ["square", "bar", "circle"]
    rows = [{"pair_id": f"p{i:04d}", "entity_id": f"e{i}", "theme": "shapes", "subtopic": "bench", "entity": "thing",
             "dimension": "content", "instruction_1": f"a {colours[i % 4]} {things[i % 3]}",
             "instruction_2": f"two {colours[(i + 1) % 4]} {things[i % 3]}s"} for i in range(n_pairs)]
    (run_dir / "instructions").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(PAIR_COLUMNS)).to_parquet(run_dir / "instructions" / "pairs.parquet")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    ap.add_argument("--pairs", type=int, default=2, help="instruction pairs (2 instructions each)")
    ap.add_argument("--candidates", type=int, default=4, help="N candidates per instruction")
    ap.add_argument("--per-call", type=int, default=4, help="instructions per call of the batched variant (K)")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU more threads stall in OpenMP waits)")
    ap.add_argument("--tiny", action="store_true", help="CI size: tiny pipeline, 1 pair x 2 candidates, 1 round")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.size, args.pairs, args.candidates, args.per_call, args.steps, args.rounds = "tiny", 1, 2, 2, 2, 1
    import torch

    torch.set_num_threads(args.threads)
    from instructengine.generation import build_generator
    from instructengine.images.candidates import run_candidates
    from instructengine.images.config import DataPipelineConfig

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    model = save_pipeline(root / "model", args.size)
    gcfg = {"kind": "diffusers", "model": str(model), "num_inference_steps": args.steps, "guidance_scale": 5.0,
            "device": "cpu", "local_files_only": True}
    generator = build_generator(DataPipelineConfig.model_validate({"run_dir": str(root), "generator": gcfg}).generator)
    n_images = args.pairs * 2 * args.candidates

    def run(variant: str, round_: int) -> tuple[float, int]:
        run_dir = root / f"{variant}-{round_}"
        write_pairs(run_dir, args.pairs)
        per_call = args.per_call if variant == "batched" else 1
        cfg = DataPipelineConfig.model_validate({
            "run_dir": str(run_dir), "generator": gcfg,
            "candidates": {"n_candidates": args.candidates, "instructions_per_call": per_call},
        })
        gen = OneImagePerCall(generator) if variant == "per_image" else CountingCalls(generator)
        t0 = time.perf_counter()
        manifest = run_candidates(cfg, generator=gen)
        seconds = time.perf_counter() - t0
        if manifest.count_out != n_images:
            raise RuntimeError(f"{variant}: {manifest.count_out} images written, expected {n_images}")
        return seconds, gen.calls

    run("batched", -1)  # warm-up: first pipeline call, imports
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    calls: dict[str, int] = {}
    for r in range(args.rounds):
        for v in VARIANTS:
            s, c = run(v, r)
            times[v].append(s)
            calls[v] = c
    tmp.cleanup()
    rows = [{"variant": v, "calls": calls[v], "images_per_call": round(n_images / calls[v], 2),
             "median_s": round(median(times[v]), 4), "images_per_s": round(n_images / median(times[v]), 3),
             "speed_vs_per_image": round(median(times["per_image"]) / median(times[v]), 3)} for v in VARIANTS]
    result = {"benchmark": "candidate_generation", "model": f"StableDiffusionPipeline, sd15 layout ({args.size})",
              "images": n_images, "instructions": args.pairs * 2, "n_candidates": args.candidates,
              "denoising_steps": args.steps, "rounds": args.rounds, "threads": args.threads, "variants": rows,
              "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()}, "machine": machine()}
    text = table(f"Candidate generation, {n_images} images, {args.steps} steps, {args.rounds} rounds", rows,
                 ["variant", "calls", "images_per_call", "median_s", "images_per_s", "speed_vs_per_image"])
    return finish(result, args.out, text, args.quiet)


if __name__ == "__main__":
    main()
