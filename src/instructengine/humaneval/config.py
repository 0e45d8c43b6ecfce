"""Config of a blind pairwise review study: what to compare, who annotates, how to serve and report.

One YAML (``configs/review.yaml``) holds all three sections; ``review create`` reads ``study``,
``review serve`` reads ``server`` and ``review results`` reads ``results``. ``study_dir`` and
``database_url`` are shared: the study's database defaults to ``<study_dir>/study.db`` (SQLite in
WAL mode); any SQLAlchemy URL (e.g. ``postgresql+psycopg://user@host/db``) may be given instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config

__all__ = [
    "CHOICES",
    "DEFAULT_CRITERIA",
    "ResultsConfig",
    "ReviewConfig",
    "ServerConfig",
    "StudyConfig",
]

#: what an annotator may answer for a pair shown left/right
CHOICES = ("left", "right", "tie", "both_bad")
#: the paper's three human-evaluation criteria
DEFAULT_CRITERIA = ("consistency", "aesthetics", "realism")


def _default_annotators() -> list[str]:
    return [f"annotator-{i:02d}" for i in range(1, 11)]


class StudyConfig(Config):
    """What a study compares and how its tasks are laid out among annotators."""

    name: str = Field("study", description="Study name shown to annotators and admins; unique within a database.")
    runs: list[str] = Field(
        default_factory=list,
        description="Evaluation folders eval/<model_name>/<benchmark> to compare (two or more, sharing prompts and seeds).",
    )
    names: list[str] = Field(
        default_factory=list,
        description="System names, one per run in the same order; empty = each run's <model_name> folder name.",
    )
    pairs: Literal["all", "reference"] = Field(
        "all",
        description="'all': every pair of systems; 'reference': the reference system against each other (the paper's setup).",
    )
    reference: str | None = Field(
        None, description="System compared against all others when pairs='reference' (default: the first run)."
    )
    seeds: list[int] | None = Field(
        None, description="Seeds to include (each must exist in every run); null = every seed the runs share."
    )
    max_prompts: int | None = Field(
        None, ge=1, description="Use a random sample of this many prompts (null = all prompts)."
    )
    annotators: list[str] = Field(
        default_factory=_default_annotators,
        description="Annotator names; each gets a secret link. The paper had 10 annotators.",
    )
    annotators_per_item: int = Field(
        3, ge=1, description="How many different annotators judge each comparison (prompt, seed, pair of systems)."
    )
    criteria: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CRITERIA),
        description="Per-criterion questions asked before the overall choice; empty = overall choice only.",
    )
    instructions: str = Field(
        "Compare the two images for the prompt. Judge each criterion, then give your overall preference.",
        description="Text shown to annotators above each task (plain text, escaped).",
    )
    seed: int = Field(0, description="Seed of the random side assignment, prompt sampling and task order.")

    @field_validator("criteria")
    @classmethod
    def _criteria_names(cls, v: list[str]) -> list[str]:
        import re

        for c in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", c) or c == "overall":
                raise ValueError(
                    f"criterion {c!r} must be a lower-case identifier (a-z, 0-9, _; at most 32 chars) other than 'overall'"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"criteria {v} contain duplicates")
        return v

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        if self.names and len(self.names) != len(self.runs):
            raise ValueError(f"names has {len(self.names)} entries but runs has {len(self.runs)}; give one name per run")
        if len(set(self.annotators)) != len(self.annotators):
            raise ValueError("annotators contain duplicate names")
        if self.annotators and self.annotators_per_item > len(self.annotators):
            raise ValueError(
                f"annotators_per_item={self.annotators_per_item} exceeds the {len(self.annotators)} annotators"
            )
        return self


class ServerConfig(Config):
    """Where ``review serve`` listens."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the app on the network.")
    port: int = Field(8765, ge=1, le=65535, description="TCP port.")
    public_url: str = Field(
        "", description="Base URL annotators reach (for printed links); empty = http://<host>:<port>."
    )


class ResultsConfig(Config):
    """How ``review results`` computes and exports results."""

    out_dir: str = Field("", description="Where to write results.json, votes.csv/json and winrate.png; empty = <study_dir>/results.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples (over prompts) for the win-rate intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the bootstrap intervals.")
    study: str | None = Field(None, description="Study name when the database holds several (default: the only one).")


class ReviewConfig(Config):
    """Blind human pairwise review: one study folder/database, created, served, and reported."""

    study_dir: str = Field("runs/review", description="Folder of the study: database (SQLite default), tokens.json, manifest.")
    database_url: str = Field(
        "", description="SQLAlchemy URL of the study database; empty = sqlite:///<study_dir>/study.db (WAL mode)."
    )
    study: StudyConfig = Field(default_factory=StudyConfig, description="What the study compares (review create).")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Web server settings (review serve).")
    results: ResultsConfig = Field(default_factory=ResultsConfig, description="Result computation and export (review results).")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.study_dir) / 'study.db').resolve()}"

    def resolved_out_dir(self) -> Path:
        return Path(self.results.out_dir) if self.results.out_dir else Path(self.study_dir) / "results"
