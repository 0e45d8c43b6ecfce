"""The main job's stage times: ``instructengine run`` on ShapesWorld, then the same command again.

Runs the one-run main job (``configs/shapes_demo.yaml``: data pipeline -> CV-DPO training ->
evaluation of base vs aligned -> report) in a fresh run folder, one stage per command (``stages=[s]``,
the same work as one command) so each is timed from outside, reads the time of every sub-stage from
the manifests it writes, then runs the whole command again, which must find everything done (its
wall time is the cost of checking).

    python benchmarks/main_job.py                          # the demo as shipped (several minutes)
    python benchmarks/main_job.py --tiny --out /tmp/job.json   # the main-job test's small settings
    python benchmarks/main_job.py train.max_steps=20       # any dotted override of the main config
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, machine, table  # noqa: E402

#: the settings of tests/experiments/test_main_job.py (seconds instead of minutes)
TINY = [
    "data.candidates.max_pairs=12", "data.candidates.n_candidates=2", "data.baselines=[]",
    "train.max_steps=2", "train.batch_size=2", "train.micro_batch_size=2", "train.checkpoint.every_n_steps=1",
    "train.threads=1",
    "eval.benchmark.limit=6", "eval.images_per_prompt=1", "eval.batch_size=8", "eval.report.grid_prompts=2",
    "eval.report.grid_seeds=1", "eval.report.bootstrap_samples=100", "eval.models.base.num_inference_steps=4",
]


def stage_times(run_dir: Path) -> list[dict[str, Any]]:
    """One row per manifest under ``run_dir``: the stage folder and its timings."""
    rows = []
    for path in sorted(run_dir.rglob("manifest.json")):
        m = json.loads(path.read_text())
        timings = m.get("timings_s") or {}
        rows.append({"stage": str(path.parent.relative_to(run_dir)), "total_s": round(sum(timings.values()), 3),
                     "timings_s": timings})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "shapes_demo.yaml"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="the main-job test's small settings")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted overrides of the main config")
    args = ap.parse_args(argv)
    import torch

    from instructengine.cli import main as cli

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    run_dir = Path(tmp.name) / "job"
    from instructengine.experiments.main_job import load_main_job

    overrides = [f"run_dir={run_dir}", *(TINY if args.tiny else []), *args.overrides]
    stages = list(load_main_job(args.config, overrides).stages)
    argv_run = ["run", "--config", args.config, *overrides]
    main_stages: dict[str, float] = {}
    for stage in stages:  # one stage per command, so that each is timed from outside
        t0 = time.perf_counter()
        if cli([*argv_run, f"stages=[{stage}]"]) != 0:
            raise RuntimeError(f"the main job failed in stage {stage}: {' '.join(argv_run)}")
        main_stages[stage] = round(time.perf_counter() - t0, 2)
    first = sum(main_stages.values())
    rows = stage_times(run_dir)
    t0 = time.perf_counter()
    if cli(argv_run) != 0:
        raise RuntimeError("the re-run of the main job failed")
    rerun = time.perf_counter() - t0
    tmp.cleanup()
    result = {"benchmark": "main_job", "config": args.config, "overrides": overrides[1:], "threads": args.threads,
              "first_run_s": round(first, 2), "rerun_s": round(rerun, 2), "main_stages_s": main_stages,
              "stages": rows,
              "stages_total_s": round(sum(r["total_s"] for r in rows), 2), "machine": machine()}
    text = table(f"Main job ({Path(args.config).name}{', tiny' if args.tiny else ''}): first run {first:.1f} s, "
                 f"re-run {rerun:.1f} s", [{"stage": f"[{k}]", "total_s": v} for k, v in main_stages.items()] + rows, ["stage", "total_s"])
    return finish(result, args.out, text, args.quiet)


if __name__ == "__main__":
    main()
