"""Typed configuration of an evaluation run and its report (one YAML drives both commands)."""

from __future__ import annotations

import re

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config
from instructengine.evaluate.benchmarks import BenchmarkSpec
from instructengine.generation.base import GeneratorConfig
from instructengine.scorers.spec import ScorerSpec

__all__ = ["PAPER_METRICS", "EvalConfig", "JudgeSpec", "ModelSpec", "ReportConfig", "ScorerSpec"]

#: Table 1's six metrics, in the paper's column order; "Average" is their plain mean
PAPER_METRICS = ["pickscore", "imagereward", "hpsv2", "clip", "blip", "aesthetic"]


class JudgeSpec(Config):
    """The VLM pairwise judge: ours (three questions in one request, both image orders, ties) or AGFSync's."""

    enabled: bool = Field(False, description="run the pairwise judge of every model against the base model")
    protocol: Literal["instructengine", "agfsync"] = Field(
        "instructengine", description="instructengine: the three questions in one request, both image orders, ties allowed, "
        "win rate = win/(win+tie+loss); agfsync: AGFSync's three questions asked separately, forced A/B choice with a "
        "reason, one image order, win rate = win/(win+loss) (see instructengine.evaluate.judge)")
    llm: dict[str, Any] = Field(default_factory=dict, description="instructengine.llm client settings for the VLM")
    max_pairs: int | None = Field(None, ge=1, description="judge at most this many (prompt, seed) pairs per model pair")
    image_size: int = Field(512, ge=32, description="longest side of the images sent to the VLM (pixels)")


class ReportConfig(Config):
    """What the report shows and where it goes."""

    after_eval: bool = Field(True, description="`eval` writes the report when it finishes")
    models: list[str] | None = Field(None, description="models to show, in order (default: the config's models)")
    base: str | None = Field(None, description="model the relative changes are computed against (default: the first)")
    metrics: list[str] | None = Field(None, description="metric columns to show (default: every column found)")
    average_metrics: list[str] = Field(default_factory=lambda: list(PAPER_METRICS), description="columns whose plain mean is 'Average' (shown when all are present)")
    bootstrap_samples: int = Field(1000, ge=1, description="bootstrap resamples for the confidence intervals")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    bootstrap_seed: int = Field(0, description="seed of the bootstrap resampling")
    grid_prompts: int = Field(8, ge=0, description="prompts in the side-by-side image grid (spread over categories)")
    grid_seeds: int = Field(1, ge=1, description="seeds per prompt in the image grid")
    grid_image_size: int = Field(192, ge=16, description="thumbnail side in the grid (pixels)")
    title: str | None = Field(None, description="report title (default: '<benchmark> evaluation')")
    output_dir: str | None = Field(None, description="report folder (default: <run_dir>/report/<benchmark>)")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelSpec(GeneratorConfig):
    """One model to evaluate: a generator config (the same one the candidates stage uses) and its name."""

    name: str = Field(description="model name; the folder eval/<name>/ (letters, digits, '.', '_', '-')")
    num_inference_steps: int = Field(50, ge=1, description="denoising steps")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be a folder-safe name: letters, digits, '.', '_', '-' (e.g. sd15-base)")
        return v


class EvalConfig(Config):
    """An evaluation run: prompts, models, seeds, scorers, and the report."""

    run_dir: str = Field("runs/eval", description="run folder; images and scores go to <run_dir>/eval/<model>/<benchmark>/")
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec, description="the prompt set")
    models: list[ModelSpec] = Field(min_length=1, description="models to evaluate (same prompts and seeds for all)")
    images_per_prompt: int = Field(1, ge=1, description="K images per prompt (seeds seed..seed+K-1 unless `seeds` is set)")
    seed: int = Field(0, description="first seed")
    seeds: list[int] | None = Field(None, description="explicit seed list (overrides images_per_prompt and seed)")
    noise: Literal["shared", "per_prompt"] = Field(
        "shared", description="initial noise: 'shared' (image seed s is the same noise for every prompt) or 'per_prompt' "
        "(each prompt and image seed has its own, instructengine.generation.noise_seed)")
    batch_size: int = Field(4, ge=1, description="images per generation batch")
    score_batch_size: int = Field(16, ge=1, description="images per scoring batch (decoded once for all scorers)")
    scorers: list[ScorerSpec] = Field(default_factory=lambda: [ScorerSpec(kind=n) for n in PAPER_METRICS], description="scorers to run; a bare name is a scorer kind with default options")
    device: str = Field("cpu", description="torch device for generation and scoring ('cpu', 'cuda', 'cuda:1', 'mps')")
    scorer_dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="dtype of the scorer models")
    skip_generation: bool = Field(False, description="score the images already on disk; fail if any is missing")
    judge: JudgeSpec = Field(default_factory=JudgeSpec, description="VLM pairwise judge settings")
    report: ReportConfig = Field(default_factory=ReportConfig, description="report settings")

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"models: duplicate names {dup}; each model needs its own folder name")
        snames = [s.label for s in self.scorers]
        sdup = sorted({n for n in snames if snames.count(n) > 1})
        if sdup:
            raise ValueError(f"scorers: {sdup} listed twice (give two entries of one kind distinct `name`s)")
        shown = self.report.models or names
        if self.report.base is not None and self.report.base not in shown:
            raise ValueError(f"report.base = {self.report.base!r} is not one of the reported models {shown}")
        return self
