"""The main job: the whole method on the embedded default (ShapesWorld), offline, on CPU.

``instructengine run --config configs/shapes_demo.yaml`` runs the enabled stages in order, each
reading the previous stage's artifacts in ``run_dir`` and skipping work already done there:

* ``eval``: the shipped base model samples ShapesBench with fixed seeds; the oracle judges and the
  tiny contrastive model scores every image;
* ``report``: markdown report with the metric table, per-category chart and image grid.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field, field_validator

from instructengine.config import Config, save_resolved
from instructengine.shapes.evaluate import ShapesEvalConfig

STAGES = ("eval", "report")


class MainJobConfig(Config):
    """The end-to-end ShapesWorld job."""

    run_dir: Path = Field(Path("runs/demo"), description="folder of this run (one sub-folder per stage)")
    stages: list[str] = Field(list(STAGES), description=f"stages to run, in order; any of {STAGES}")
    eval: ShapesEvalConfig = Field(default_factory=ShapesEvalConfig, description="ShapesBench evaluation")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; allowed: {list(STAGES)}")
        return v


def run_main_job(cfg: MainJobConfig, log=print) -> Path:
    """Run the enabled stages; returns the report path (or the run folder without a report)."""
    from instructengine.shapes.evaluate import evaluate_shapes
    from instructengine.shapes.report import write_report

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run / "config.yaml")
    t0 = time.time()
    folders = []
    if "eval" in cfg.stages:
        log(f"[eval] {cfg.eval.model_name} on {cfg.eval.benchmark}")
        folders.append(evaluate_shapes(cfg.eval, run))
    if "report" in cfg.stages:
        if not folders:
            folders = sorted((run / "eval").glob("*/*/summary.json"))
            folders = [f.parent for f in folders]
        if not folders:
            raise FileNotFoundError(f"no evaluation under {run / 'eval'}; enable the 'eval' stage")
        path = write_report(folders, run / "report", notes=[f"main job took {time.time() - t0:.0f} s"])
        log(f"[report] {path}")
        return path
    return run
