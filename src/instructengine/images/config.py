"""Configuration of the image stages, and of the whole data pipeline (text + image stages).

:class:`DataPipelineConfig` is the text pipeline's config (:class:`TextPipelineConfig`: run folder,
backend, LLM, embedder, taxonomy, entities, pairs) plus one section per image stage, so one YAML
describes a whole data run (``configs/data_shapes.yaml``, ``configs/data_sdxl.yaml``). The image
stages only read their own sections, ``run_dir`` and (for a VLM judge without its own ``llm``) the
top-level ``llm``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config
from instructengine.generation.base import GeneratorConfig
from instructengine.scorers.spec import ScorerSpec
from instructengine.llm.config import LLMConfig
from instructengine.text_pipeline import TextPipelineConfig

__all__ = [
    "BaselineSpec",
    "CandidatesConfig",
    "DataPipelineConfig",
    "DatasetConfig",
    "GeneratorConfig",
    "IMAGE_STAGES",
    "JudgeConfig",
    "ScorerSpec",
    "SelectConfig",
    "WeightedScorerSpec",
]

IMAGE_STAGES = ("candidates", "select", "judge", "dataset", "baselines")
PAPER_GENERATOR = "stabilityai/stable-diffusion-xl-base-1.0"


class CandidatesConfig(Config):
    """Stage 4: N candidates per instruction, one file per image, with a deterministic per-image seed."""

    n_candidates: int = Field(8, ge=1, description="Candidates per instruction (paper: 8 seeds with SDXL).")
    seed: int = Field(0, description="Base seed; image k of instruction i gets seed hash(seed, i, k).")
    instructions_per_call: int = Field(
        1,
        ge=1,
        description="Instructions whose candidates share one batched generator call (each call holds "
        "instructions_per_call x n_candidates images; an image depends only on its prompt and seed).",
    )
    max_pairs: int | None = Field(
        None, ge=1, description="Use only this many pairs of pairs.parquet (those with the smallest ids: a stable random subset); null: all."
    )
    retry_failed: bool = Field(False, description="On resume, retry instructions whose generation failed earlier.")
    num_shards: int = Field(
        1,
        ge=1,
        description="Independent jobs sharing the work without a rendezvous (e.g. a SLURM array or preemptible "
        "nodes on a shared filesystem): job `shard_index` takes instructions i with i % num_shards == shard_index "
        "and skips the merge; a final run with num_shards=1 fills any gap and writes candidates.parquet.",
    )
    shard_index: int = Field(0, ge=0, description="This job's shard, 0 <= shard_index < num_shards.")
    abort_after_failures: int = Field(
        8,
        ge=1,
        description="Abort when this many instructions in a row fail before any succeeds in this process "
        "(a misconfigured generator would otherwise fail every item).",
    )

    @model_validator(mode="after")
    def _check_shard(self) -> "CandidatesConfig":
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index={self.shard_index} must be < num_shards={self.num_shards}")
        return self


class WeightedScorerSpec(ScorerSpec):
    """A scorer and its weight in a weighted multi-score reward."""

    weight: float = Field(1.0, description="Weight of this scorer's (normalised) score in the reward.")


class SelectConfig(Config):
    """Stage 5a: best-of-N per instruction by an image-text scorer (paper: BLIP)."""

    scorer: ScorerSpec = Field(default_factory=lambda: ScorerSpec(kind="blip"), description="The selection scorer (paper: BLIP).")


class JudgeConfig(Config):
    """Stage 5b: keep or drop each selected image (paper: GPT-4o)."""

    kind: str = Field(
        "vlm",
        description="vlm: a vision-language model through the OpenAI-compatible client; none: keep every selected "
        "image; or a judge a bundle registered (e.g. ShapesWorld's exact oracle, shapes_oracle) or "
        "'package.module:factory' (called with this config and the run folder).",
    )
    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("judge", v)

    llm: LLMConfig | None = Field(
        None, description="kind=vlm: client settings; null: the pipeline's top-level `llm` (its cache goes to <run_dir>/judge/)."
    )
    prompt_dir: str | None = Field(
        None, description="kind=vlm: folder whose judge_system.jinja / judge_image.jinja override the packaged templates."
    )
    image_detail: Literal["auto", "low", "high"] = Field("low", description="kind=vlm: the image_url detail level sent.")
    concurrency: int = Field(32, ge=1, description="kind=vlm: judgements in flight.")
    chunk_size: int = Field(256, ge=1, description="Judgements recorded per resume-ledger line.")
    retry_dropped: bool = Field(False, description="On resume, judge again images whose judgement failed (judge_error).")


class DatasetConfig(Config):
    """Stage 6: the final dataset folder (samples.parquet + images + card)."""

    folder: str = Field(
        "images",
        description="Dataset folder, relative to run_dir (the trainer's data.path); holds samples.parquet, "
        "images/ and README.md.",
    )
    link: Literal["hardlink", "copy", "symlink"] = Field(
        "hardlink", description="How kept images enter the dataset folder (hardlink falls back to copy across filesystems)."
    )
    histograms: bool = Field(True, description="Write PNG histograms of kept samples per theme and per dimension.")


class BaselineSpec(Config):
    """One baseline data set built from the same candidates: best/worst of N by a (weighted) reward."""

    name: str = Field(..., description="Folder name under <run_dir>/baselines/ (letters, digits, '.', '_', '-').")
    scorers: list[WeightedScorerSpec] = Field(
        ..., min_length=1, description="Scorers whose weighted (normalised) sum is the reward; one scorer: plain reward (HPSv2 baseline)."
    )
    normalize: Literal["none", "zscore", "minmax"] = Field(
        "none",
        description="Per-scorer normalisation over all candidates before weighting: none, zscore or minmax "
        "(use one when scorers live on different scales).",
    )
    min_gap: float = Field(0.0, ge=0, description="Drop an instruction whose best and worst rewards differ by <= this (reward_tie).")

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"baseline name {v!r} must be folder-safe: letters, digits, '.', '_', '-' (e.g. hpsv2)")
        return v


class _ImageSections(Config):
    generator: GeneratorConfig = Field(
        default_factory=lambda: GeneratorConfig(kind="diffusers", model=PAPER_GENERATOR),
        description="Stage 4: the generator backend (default: the paper's SDXL).",
    )
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig, description="Stage 4: candidates.")
    select: SelectConfig = Field(default_factory=SelectConfig, description="Stage 5a: best-of-N selection.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Stage 5b: the judge.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="Stage 6: the dataset folder and card.")
    baselines: list[BaselineSpec] = Field(
        default_factory=list, description="Baseline data sets (reward best/worst-of-N, AGFSync weighted multi-score)."
    )

    @field_validator("baselines")
    @classmethod
    def _unique_names(cls, v: list[BaselineSpec]) -> list[BaselineSpec]:
        names = [b.name for b in v]
        if len(set(names)) != len(names):
            raise ValueError(f"baseline names must be unique, got {names}")
        return v


class DataPipelineConfig(TextPipelineConfig, _ImageSections):
    """The whole data pipeline: the text stages' sections plus one section per image stage."""

    def judge_llm(self) -> LLMConfig:
        return self.judge.llm or self.llm
