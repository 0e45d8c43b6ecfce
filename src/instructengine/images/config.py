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
from instructengine.train.config import PromptListConfig

__all__ = [
    "BASELINE_PRESETS",
    "BaselineSpec",
    "CandidatePromptList",
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
    prompt_list: "CandidatePromptList | None" = Field(
        None,
        description="Instead of <run_dir>/instructions/pairs.parquet: any prompt list (DiffusionDB metadata, Pick-a-Pic "
        "captions, a table or text file); one instruction per distinct prompt (side 0), for the reward best/worst "
        "baseline on foreign prompts (`baselines`, then method reward_dpo).",
    )
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


class CandidatePromptList(PromptListConfig):
    """A prompt list as the candidates stage's input (``candidates.prompt_list``)."""

    path: str = Field(description="folder the `files` patterns are relative to (absolute patterns ignore it)")
    max_prompts: int | None = Field(
        None, ge=1, description="keep a seeded random subset of this many prompts (nested in larger ones); null: all"
    )
    subset_seed: int = Field(0, description="seed of the max_prompts subset")


CandidatesConfig.model_rebuild()


class WeightedScorerSpec(ScorerSpec):
    """A scorer and its term in a weighted multi-score reward: ``weight * normalize(scale * score)``."""

    weight: float = Field(1.0, description="Weight of this scorer's (scaled, normalised) score in the reward.")
    scale: float = Field(
        1.0,
        description="Multiplier applied to the raw score before normalising and weighting. AGFSync puts every "
        "term on a 0-100 scale: VQA accuracy x100, CLIP cosine x100, VILA x100 (the LAION aesthetic, 1-10, x10).",
    )
    prompt_chars: int | None = Field(
        None,
        ge=1,
        description="Score with each prompt cut to its first N characters (the released AGFSync code scores CLIP "
        "with prompt[0:77], characters, not tokens); null: the whole prompt.",
    )

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if self.prompt_chars is None:
            return base
        return f"{base}-chars{self.prompt_chars}"


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
        None, description="kind=vlm: client settings; null: the pipeline's top-level `llm` (its cache goes to "
        "<run_dir>/judge/). Either way the judge samples at temperature 0 (repeatable verdicts; the text stages' 1.0 "
        "is for diverse proposals) unless this section sets `temperature`."
    )

    @field_validator("llm")
    @classmethod
    def _repeatable(cls, v: LLMConfig | None) -> LLMConfig | None:
        if v is not None and "temperature" not in v.model_fields_set:
            v = v.model_copy(update={"temperature": 0.0})  # recorded as set: the resolved config shows what ran
        return v
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
    license: str = Field(
        "other", description="License in the dataset card's front matter (a Hub license id, e.g. cc-by-4.0; 'other' "
        "when the generator's and the LLM's terms decide)."
    )
    pretty_name: str = Field("InstructEngine preference dataset", description="Title of the dataset card.")
    tags: list[str] = Field(default_factory=list, description="Extra tags of the dataset card (beside instructengine, "
                            "preference, dpo, text-to-image).")


#: Named baselines: what they fix (scorers, weights, scales, normalisation, reward arithmetic).
#: ``agfsync_paper``: the AGFSync paper's S = 0.35 VQA + 0.55 CLIP + 0.10 aesthetic, each on 0-100
#: (VQA accuracy x100 with AGFSync's question protocol, CLIP cosine x100, VILA x100), raw sum.
#: ``agfsync_code``: what the released AGFSync code (build_dataset.py) computes: 0.85 CLIP + 0.15
#: aesthetic (VILA x100, read from its aes_score.py output), no VQA term, CLIP on prompt[0:77], the
#: sum accumulated in float16.
BASELINE_PRESETS: dict[str, dict[str, Any]] = {
    "agfsync_paper": {
        "normalize": "none",
        "reward_dtype": "float64",
        "scorers": [
            {"kind": "vqa", "weight": 0.35, "scale": 100.0, "options": {"protocol": "agfsync"}},
            {"kind": "clip", "weight": 0.55, "scale": 100.0},
            {"kind": "vila", "weight": 0.10, "scale": 100.0},
        ],
    },
    "agfsync_code": {
        "normalize": "none",
        "reward_dtype": "float16",
        "scorers": [
            {"kind": "clip", "weight": 0.85, "scale": 100.0, "prompt_chars": 77},
            {"kind": "vila", "weight": 0.15, "scale": 100.0},
        ],
    },
}
#: preset_aesthetic=laion: the VILA term is replaced by the LAION predictor (1-10) x10, on 0-100 like VILA x100
LAION_SUBSTITUTE = {"kind": "aesthetic", "scale": 10.0}
_PRESET_FIXED = ("weight", "scale", "prompt_chars")


def _expand_preset(data: dict[str, Any]) -> dict[str, Any]:
    """The baseline ``data`` with its preset's scorers, weights and scales filled in (idempotent).

    The user's ``scorers`` entries may only add run settings (options, device, dtype, batch_size,
    column) to the preset's scorers, matched by kind.

    Raises:
        ValueError: unknown preset, a scorer the preset lacks, a changed weight/scale/normalize, or
            a VILA term without its SavedModel folder.
    """
    name, preset_name = data.get("name", "?"), data["preset"]
    if preset_name not in BASELINE_PRESETS:
        raise ValueError(f"baseline {name!r}: unknown preset {preset_name!r}; known: {sorted(BASELINE_PRESETS)}")
    preset = BASELINE_PRESETS[preset_name]
    aesthetic = data.get("preset_aesthetic", "vila")
    terms = [dict(t) for t in preset["scorers"]]
    if aesthetic == "laion":
        terms = [{**t, **LAION_SUBSTITUTE} if t["kind"] == "vila" else t for t in terms]
    for key in ("normalize", "reward_dtype"):
        if key in data and data[key] != preset[key]:
            raise ValueError(f"baseline {name!r}: preset {preset_name} fixes {key}={preset[key]}, got {data[key]!r}; "
                             f"drop the preset to change it")
    given = {}
    for entry in data.get("scorers") or []:
        entry = entry.model_dump() if hasattr(entry, "model_dump") else dict(entry)
        given[entry.get("kind")] = entry
    known = [t["kind"] for t in terms]
    extra = sorted(set(given) - set(known), key=str)
    if extra:
        raise ValueError(f"baseline {name!r}: preset {preset_name} has the scorers {known}, not {extra}; "
                         f"list only those to give their options/device")
    scorers = []
    for term in terms:
        user = given.get(term["kind"], {})
        for key in _PRESET_FIXED:
            if key in user and user[key] != term.get(key, WeightedScorerSpec.model_fields[key].default):
                raise ValueError(f"baseline {name!r}: preset {preset_name} fixes {term['kind']}.{key}="
                                 f"{term.get(key)}, got {user[key]!r}; drop the preset to change it")
        fixed_options = term.get("options", {})
        for key, value in fixed_options.items():
            if key in user.get("options", {}) and user["options"][key] != value:
                raise ValueError(f"baseline {name!r}: preset {preset_name} fixes {term['kind']}.options.{key}="
                                 f"{value}, got {user['options'][key]!r}; drop the preset to change it")
        options = {**user.get("options", {}), **fixed_options}
        scorers.append(WeightedScorerSpec.model_validate({**user, **term, "options": options}))
    if aesthetic == "vila" and not next(s for s in scorers if s.kind == "vila").options.get("model_path"):
        raise ValueError(
            f"baseline {name!r}: preset {preset_name} scores aesthetics with Google's VILA-R, a TensorFlow-only model: "
            "give scorers: [{kind: vila, options: {model_path: <VILA-R SavedModel folder>}}] (needs tensorflow), "
            "or set preset_aesthetic: laion for our substitute (LAION predictor x10)")
    return {**data, "normalize": preset["normalize"], "reward_dtype": preset["reward_dtype"], "scorers": scorers}


class BaselineSpec(Config):
    """One baseline data set built from the same candidates: best/worst of N by a (weighted) reward.

    The reward of a candidate is ``sum_i weight_i * normalize(scale_i * score_i)``; best = argmax,
    worst = argmin (first on ties, in candidate order k). ``preset`` names a published recipe
    (:data:`BASELINE_PRESETS`) and fills in its scorers, weights, scales and arithmetic.
    """

    name: str = Field(..., description="Folder name under <run_dir>/baselines/ (letters, digits, '.', '_', '-').")
    preset: Literal["agfsync_paper", "agfsync_code"] | None = Field(
        None,
        description="A published recipe that fixes scorers, weights, scales, normalize and reward_dtype: "
        "agfsync_paper (0.35 VQA + 0.55 CLIP + 0.10 VILA, each x100, AGFSync's VQA protocol, raw sum), "
        "agfsync_code (the released AGFSync code: 0.85 CLIP + 0.15 VILA, each x100, CLIP on prompt[0:77], float16 sum). "
        "`scorers` then only adds run settings (options, device, dtype, batch_size) to the preset's scorers by kind.",
    )
    preset_aesthetic: Literal["vila", "laion"] = Field(
        "vila",
        description="With a preset: the aesthetic term. vila: AGFSync's VILA-R (TensorFlow SavedModel, scorer `vila`, "
        "needs options.model_path); laion: our substitute, the LAION predictor (scorer `aesthetic`, 1-10) x10.",
    )
    scorers: list[WeightedScorerSpec] = Field(
        ..., min_length=1, description="Scorers whose weighted (scaled, normalised) sum is the reward; one scorer: plain reward (HPSv2 baseline)."
    )
    normalize: Literal["none", "zscore", "minmax"] = Field(
        "none",
        description="Per-scorer normalisation over all candidates before weighting: none, zscore or minmax. "
        "Ours, not AGFSync's: zscore turns weight w into w/sigma of that scorer, so it picks other pairs than "
        "the paper's raw sum; AGFSync uses none with explicit scales.",
    )
    reward_dtype: Literal["float64", "float16"] = Field(
        "float64",
        description="Arithmetic of the reward sum. float16: the released AGFSync code's (each score cast to float16 "
        "and summed in float16, so near ties collapse and the first candidate wins).",
    )
    min_gap: float = Field(0.0, ge=0, description="Drop an instruction whose best and worst rewards differ by <= this (reward_tie).")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            return _expand_preset(data)
        if isinstance(data, dict) and data.get("preset_aesthetic", "vila") != "vila":
            raise ValueError(f"baseline {data.get('name', '?')!r}: preset_aesthetic applies only with a preset")
        return data

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
        """The judge's client settings: ``judge.llm``, else the top-level ``llm`` at temperature 0."""
        return self.judge.llm or self.llm.model_copy(update={"temperature": 0.0})
