"""The paper's Table 1 as one run: data preparation, then every method on its own data source.

Table 1 compares the base model, ReFL (prompts of a public prompt list, DiffusionDB), Diffusion-DPO
on a public preference source (Pick-a-Pic v2), the reward best/worst-of-N baseline on public prompts
and on InstructEngine's own prompts (``HPSv2_pick-a-pic`` vs ``HPSv2_InstructEngine``), and
cross-validation DPO on InstructEngine's data. This runner is the ablation runner
(:mod:`instructengine.experiments.ablation`: arms, training seeds, paired two-level bootstrap
intervals, ``table.md`` + ``summary.json``) with a ``prepare`` list in front of it: the steps that
build each arm's data, run in order, each resumable (a finished step returns at once). A step names a
``data_builder`` component by ``kind`` (the library's ``data_pipeline``; a bundle's, e.g. a
world's own Pick-a-Pic) with its keyword ``options``. Arms then point at the folders the steps wrote
through ordinary ``data.*`` overrides, so the same runner serves a bundle whose sources must be
built and the real bundle whose sources are downloaded (``prepare: []``).

Outputs (``<run_dir>/ablation/<name>/``): those of the ablation runner, plus ``prepare.json`` (each
step's seconds and output) and a "Data preparation" section in ``table.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from instructengine.config import Config
from instructengine.experiments.ablation import AblationConfig, run_ablation
from instructengine.runs import atomic_write_json, atomic_write_text

__all__ = ["PrepareStep", "Table1Config", "data_pipeline_step", "run_prepare", "run_table1"]

log = logging.getLogger("instructengine.experiments.ablation")  # the runner's progress logger


class PrepareStep(Config):
    """One data preparation step: ``builder(**options)`` of a registered ``data_builder``."""

    name: str = Field(description="label of the step (in prepare.json and the table's note)")
    kind: str = Field(description="a registered data_builder (data_pipeline, or a bundle's) or 'module:function'")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the builder")


class Table1Config(AblationConfig):
    """Table 1: data preparation steps + the ablation runner's arms, seeds, evaluation and table."""

    prepare: list[PrepareStep] = Field(default_factory=list, description="data steps run first, in order (resumable)")


def data_pipeline_step(config: str, overrides: list[str] | None = None, stages: list[str] | None = None,
                       with_text: bool = False) -> str:
    """The ``data_pipeline`` builder: the image stages of a data pipeline config (optionally the text
    stages first); e.g. ``stages: [candidates, baselines]`` with ``candidates.prompt_list`` set is the
    reward best/worst-of-N baseline on a foreign prompt list. Returns the run folder.

    Raises:
        ConfigError: the config does not validate.
    """
    from instructengine.config import load_config
    from instructengine.images.config import IMAGE_STAGES, DataPipelineConfig
    from instructengine.images.pipeline import run_image_stages

    cfg = load_config(DataPipelineConfig, config, list(overrides or []))
    run_image_stages(cfg, list(stages or IMAGE_STAGES), with_text=with_text, log=log.info)
    return cfg.run_dir


def run_prepare(steps: list[PrepareStep], root: Path) -> list[dict[str, Any]]:
    """Run every step in order; returns (and writes to ``root/prepare.json``) each one's seconds and output."""
    from instructengine import registry

    done = []
    for step in steps:
        t0 = time.perf_counter()
        log.info("prepare %s (%s)", step.name, step.kind)
        out = registry.instantiate("data_builder", step.kind, where=f"prepare step {step.name!r}", **step.options)
        seconds = time.perf_counter() - t0
        log.info("prepared %s in %.0f s", step.name, seconds)
        done.append({"name": step.name, "kind": step.kind, "output": str(out) if out is not None else None,
                     "seconds": round(seconds, 1)})
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "prepare.json", done)
    return done


def format_prepare(done: list[dict[str, Any]]) -> str:
    if not done:
        return ""
    lines = ["", "## Data preparation (this invocation; a finished step is reused in seconds)", "",
             "| step | builder | output | seconds |", "|---|---|---|---|"]
    lines += [f"| {d['name']} | {d['kind']} | {d['output'] or '-'} | {d['seconds']} |" for d in done]
    return "\n".join(lines) + "\n"


def run_table1(cfg: Table1Config) -> Path:
    """Prepare the data, then train and evaluate every arm (resumable); returns ``table.md``."""
    root = Path(cfg.run_dir) / "ablation" / cfg.name
    t0 = time.perf_counter()
    done = [] if cfg.summarize_only else run_prepare(cfg.prepare, root)
    table = run_ablation(cfg)
    wall = time.perf_counter() - t0
    note = format_prepare(done) + f"\nWall time including data preparation: {wall / 60:.1f} min.\n"
    return atomic_write_text(table, table.read_text() + note)
