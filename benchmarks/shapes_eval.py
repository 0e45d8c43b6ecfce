"""Time a ShapesWorld evaluation of two models through the harness, report included.

Target (issue "evaluation harness"): two models on ShapesBench with the full report in <= 5 minutes
on 2 CPU cores.

    python benchmarks/shapes_eval.py                                  # configs/eval_shapes.yaml
    python benchmarks/shapes_eval.py --config configs/eval_shapes.yaml --threads 2 --target 300

Runs in a fresh temporary run folder (nothing reused), prints the time per model and stage from
the manifests and the process's CPU time (``cpu_s``: comparable between runs on a shared machine,
where wall time is not), and exits 1 when the total exceeds the target. Generation dtype matters
more than anything else on CPUs without AVX512-BF16 (docs/training.md, "Evaluation speed"):

    python benchmarks/shapes_eval.py --threads 1 benchmark.limit=6 images_per_prompt=1 \
        models.base.dtype=float32 models.perturbed.dtype=float32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


#: CI size: 6 prompts, 1 image each, 4 denoising steps, a small bootstrap
TINY = ["benchmark.limit=6", "images_per_prompt=1", "models.base.num_inference_steps=4",
        "models.perturbed.num_inference_steps=4", "report.bootstrap_samples=100", "report.grid_prompts=2",
        "report.grid_seeds=1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/eval_shapes.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=300.0, help="seconds")
    ap.add_argument("--tiny", action="store_true", help="CI size (see TINY)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the eval config")
    args = ap.parse_args(argv)
    if args.tiny:
        args.overrides = [*TINY, *args.overrides]
        args.threads = 1  # two threads on a loaded 2-core machine stall in OpenMP waits

    import torch

    from instructengine.config import load_config
    from instructengine.evaluate.config import EvalConfig
    from instructengine.evaluate.report import report
    from instructengine.evaluate.runner import evaluate

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(EvalConfig, args.config, [*args.overrides, f"run_dir={tmp}"])
        t0, c0 = time.perf_counter(), time.process_time()
        folders = evaluate(cfg, log=lambda s: None)
        t_eval = time.perf_counter() - t0
        paths = report(cfg, log=lambda s: None)
        total = time.perf_counter() - t0
        js = json.loads(Path(paths["json"]).read_text())
        result = {"models": js["models"], "n_images_per_model": js["n_images"], "eval_s": round(t_eval, 1),
                  "report_s": round(total - t_eval, 1), "total_s": round(total, 1), "threads": args.threads,
                  "cpu_s": round(time.process_time() - c0, 1),  # this process's CPU time: robust to a shared CPU
                  "exact": {m: js["means"][m].get("exact") for m in js["models"]}}
        for name, folder in folders.items():
            m = json.loads((Path(folder) / "manifest.json").read_text())
            result[f"timings_{name}"] = m["timings_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    ok = total <= args.target
    print(f"{'OK' if ok else 'OVER TARGET'}: {total:.0f} s for two models (target {args.target:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
