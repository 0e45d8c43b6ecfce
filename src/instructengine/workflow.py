"""The main job: the whole method on the embedded default (ShapesWorld), offline, on CPU.

``instructengine run --config configs/shapes_demo.yaml`` runs the enabled stages in order, each
reading the previous stage's artifacts in ``run_dir`` and skipping work already done there:

* ``data``: the data pipeline (taxonomy -> entities -> instruction pairs -> candidates -> best-of-N
  -> judge -> dataset + card -> baseline datasets), from its own config file;
* ``train``: alignment training on that dataset (CV-DPO by default), from its own config file;
* ``eval``: the evaluation harness samples the base model and the aligned one on the same prompts
  and seeds and scores them;
* ``report``: the harness's report (markdown + HTML: table, intervals, per-category, charts, grid).

Each stage keeps its own typed config (the files named here, plus dotted overrides); the main job
only ties them together: one ``run_dir`` for all, the training reads the dataset the data stage
wrote, and the evaluation compares the config's first model ("the base") with a copy of it that
loads the trained U-Net. All configs are loaded and validated before any stage starts, and the
resolved ones are saved in ``run_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from instructengine.config import Config, ConfigError, load_config, save_resolved

STAGES = ("data", "train", "eval", "report")


class StageRef(Config):
    """A stage's own config file and dotted overrides applied on top of it."""

    config: Path = Field(description="YAML file of the stage's config class")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides key.sub=value")


class EvalRef(StageRef):
    aligned_name: str = Field("aligned", description="name of the aligned model in the evaluation and report")


class MainJobConfig(Config):
    """The end-to-end ShapesWorld job."""

    run_dir: Path = Field(Path("runs/demo"), description="folder of this run (one sub-folder per stage)")
    stages: list[str] = Field(list(STAGES), description=f"stages to run, in order; any of {STAGES}")
    data: StageRef = Field(default_factory=lambda: StageRef(config=Path("configs/data_shapes.yaml")),
                           description="data pipeline (class: instructengine.images.config.DataPipelineConfig)")
    train: StageRef = Field(default_factory=lambda: StageRef(config=Path("configs/train_shapes.yaml")),
                            description="training (class: instructengine.train.config.TrainConfig)")
    eval: EvalRef = Field(default_factory=lambda: EvalRef(config=Path("configs/eval_shapes.yaml")),
                          description="evaluation + report (class: instructengine.evaluate.config.EvalConfig); "
                          "its first model is the base")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; allowed: {list(STAGES)}")
        return v


def stage_configs(cfg: MainJobConfig) -> dict[str, Any]:
    """The three stage configs, loaded, tied to ``cfg.run_dir`` and validated.

    Raises:
        ConfigError: a missing or invalid stage config (the message names the file).
    """
    from instructengine.evaluate.config import EvalConfig
    from instructengine.images.config import DataPipelineConfig
    from instructengine.train.config import TrainConfig

    run = str(cfg.run_dir)
    data = load_config(DataPipelineConfig, cfg.data.config, [*cfg.data.overrides, f"run_dir={run}"])
    images = Path(run) / data.dataset.folder
    train = load_config(TrainConfig, cfg.train.config, [*cfg.train.overrides, f"run_dir={run}", f"data.path={images}"])
    ev = load_config(EvalConfig, cfg.eval.config, [*cfg.eval.overrides, f"run_dir={run}"])
    base = ev.models[0]
    if "unet" not in _options_of(base.kind):
        raise ConfigError(f"{cfg.eval.config}: the first model (the base) has kind {base.kind!r}; the main job needs "
                          "kind 'shapes' to load the trained U-Net into it")
    unet = Path(run) / "train" / train.output_name / "final" / "unet"
    aligned = base.model_copy(update={"name": cfg.eval.aligned_name, "options": {**base.options, "unet": str(unet)}})
    ev = ev.model_validate({**ev.model_dump(), "models": [base.model_dump(), aligned.model_dump()],
                            "report": {**ev.report.model_dump(), "models": None, "base": base.name}})
    return {"data": data, "train": train, "eval": ev}


def _options_of(kind: str) -> set[str]:
    if kind == "shapes":
        from instructengine.shapes.harness import GENERATOR_OPTIONS

        return set(GENERATOR_OPTIONS)
    return set()


def run_main_job(cfg: MainJobConfig, log=print) -> Path:
    """Run the enabled stages; returns the report.md path (or the run folder without a report)."""
    run = Path(cfg.run_dir)
    configs = stage_configs(cfg)  # everything validated before any work
    run.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run / "config.yaml")
    for name, c in configs.items():
        save_resolved(c, run / f"config.{name}.yaml")
    timings: dict[str, float] = {}
    out: Path = run
    for stage in cfg.stages:
        t0 = time.time()
        log(f"[main] stage {stage}")
        if stage == "data":
            from instructengine.images.config import IMAGE_STAGES
            from instructengine.images.pipeline import run_image_stages

            run_image_stages(configs["data"], IMAGE_STAGES, with_text=True, log=log)
        elif stage == "train":
            from instructengine.train.trainer import run_training

            result = run_training(configs["train"])
            log(f"[train] {configs['train'].method}: {result.steps} steps -> {result.final_path}"
                + (" (already complete)" if result.skipped else ""))
        elif stage == "eval":
            from instructengine.evaluate.runner import evaluate

            evaluate(configs["eval"], log=log)
        elif stage == "report":
            from instructengine.evaluate.report import report

            paths = report(configs["eval"], log=log)
            out = Path(paths["markdown"])
        timings[stage] = round(time.time() - t0, 1)
        log(f"[main] stage {stage} took {timings[stage]:.0f} s")
    log(f"[main] done in {sum(timings.values()):.0f} s: {timings}")
    return out
