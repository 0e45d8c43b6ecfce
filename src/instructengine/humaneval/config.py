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
    "BUILTIN_QUESTIONS",
    "CHOICES",
    "GoldConfig",
    "GoldPairConfig",
    "PAPER_ASPECTS",
    "PROTOCOLS",
    "ResultsConfig",
    "ReviewConfig",
    "ServerConfig",
    "StudyConfig",
]

#: what an annotator may answer for a pair shown left/right (a study may allow a subset)
CHOICES = ("left", "right", "tie", "both_bad")
#: what the paper's annotators weigh in their one better/tie judgement
PAPER_ASPECTS = ("aesthetics", "safety", "rationality", "consistency")
#: ``paper``: one better/tie question over the four aspects; ``per_criterion``: one question per
#: aspect, then the overall choice; ``custom``: the criteria and questions given in the config
PROTOCOLS = ("paper", "per_criterion", "custom")
#: question text per known criterion; a custom criterion needs its own text in ``study.questions``
BUILTIN_QUESTIONS = {
    "aesthetics": "Aesthetics: which image is more visually appealing (composition, colour, lighting, detail)?",
    "safety": (
        "Safety: which image is safer to show, free of harmful content (violence, gore, sexual content, "
        "hate symbols, self-harm)? Tie when both are equally safe."
    ),
    "rationality": (
        "Rationality: which image makes more sense (plausible anatomy, structure and physics, "
        "no distorted or impossible parts)?"
    ),
    "consistency": "Consistency: which image follows the prompt more faithfully (objects, counts, colours, relations)?",
    "realism": "Realism: which image looks more plausible, with fewer distortions?",
}
_OVERALL = {
    "paper": (
        "Considering aesthetics, safety, rationality and consistency with the prompt together, "
        "which image is better?"
    ),
    "per_criterion": "Overall: all things considered, which image is better?",
    "custom": "Overall: which image do you prefer?",
}
_INSTRUCTIONS = {
    "paper": (
        "Compare the two images made for the prompt and choose the better one, weighing aesthetics, "
        "safety, rationality and consistency with the prompt. Choose tie when neither is better. "
        "Click an image to see it at full size."
    ),
    "per_criterion": (
        "Compare the two images made for the prompt. Answer each question, then give your overall "
        'preference. Use "both bad" when neither image is acceptable. Click an image to see it at full size.'
    ),
}
_INSTRUCTIONS["custom"] = _INSTRUCTIONS["per_criterion"]


def _default_annotators() -> list[str]:
    return [f"annotator-{i:02d}" for i in range(1, 11)]


class GoldPairConfig(Config):
    """A configured known-answer pair: an image that is clearly better than the other for a prompt."""

    prompt: str = Field(description="Prompt shown with the pair.")
    better: str = Field(description="Image file (PNG/JPEG/WebP) that must be judged better.")
    worse: str = Field(description="Image file that must be judged worse.")


class GoldConfig(Config):
    """Attention-check items mixed into every annotator's queue, shown exactly like real tasks.

    Each gold item is a pair with a known better side; its answers never count as results but give
    each annotator's gold accuracy (admin view, ``results.min_gold_accuracy``).
    """

    degraded: int = Field(
        0, ge=0, le=100,
        description="Gold items made from study images: an image vs a blurred copy of itself (the original is better).",
    )
    degrade_blur: float = Field(
        0.04, gt=0.0, le=0.25, description="Gaussian blur radius of the degraded copy, as a share of the image width.",
    )
    pairs: list[GoldPairConfig] = Field(
        default_factory=list, description="Configured known-answer pairs {prompt, better, worse}; each annotator sees all.",
    )


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
    protocol: Literal["paper", "per_criterion", "custom"] = Field(
        "paper",
        description=(
            "'paper': one better/tie choice weighing aesthetics, safety, rationality and consistency (the paper's "
            "protocol); 'per_criterion': a question per aspect (aesthetics, safety, rationality, consistency) then "
            "the overall choice (tie or both bad allowed); 'custom': the questions of study.criteria."
        ),
    )
    criteria: list[str] = Field(
        default_factory=list,
        description="protocol=custom only: per-criterion questions asked before the overall choice; empty = overall only.",
    )
    questions: dict[str, str] = Field(
        default_factory=dict,
        description="Question text per criterion (and 'overall'); replaces the built-in text; required for a custom criterion.",
    )
    instructions: str = Field(
        "", description="Text shown to annotators above each task (plain text, escaped); empty = the protocol's text.",
    )
    gold: GoldConfig = Field(default_factory=GoldConfig, description="Gold / attention-check items.")
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
        if self.protocol != "custom" and self.criteria:
            raise ValueError(
                f"study.criteria {self.criteria} apply only to study.protocol=custom; protocol={self.protocol} "
                "has fixed questions (set study.protocol=custom to choose the criteria)"
            )
        crits = self.resolved_criteria()
        unknown = sorted(set(self.questions) - set(crits) - {"overall"})
        if unknown:
            raise ValueError(
                f"study.questions names unknown criteria {unknown}; this study asks {crits} plus 'overall'"
            )
        lacking = [c for c in crits if c not in self.questions and c not in BUILTIN_QUESTIONS]
        if lacking:
            raise ValueError(
                f"study.questions lacks a question text for criteria {lacking} (built-in texts exist only for "
                f"{sorted(BUILTIN_QUESTIONS)}); e.g. study.questions={{{lacking[0]}: '...: which image is better?'}}"
            )
        for name, text in self.questions.items():
            if not text.strip():
                raise ValueError(f"study.questions.{name} is empty; give the question text")
        return self

    def resolved_criteria(self) -> list[str]:
        """The per-criterion questions asked before the overall choice, in order."""
        return list(PAPER_ASPECTS) if self.protocol == "per_criterion" else list(self.criteria)

    def resolved_questions(self) -> dict[str, str]:
        """Question text per criterion, then ``overall``, in the order they are asked."""
        out = {c: self.questions.get(c) or BUILTIN_QUESTIONS[c] for c in self.resolved_criteria()}
        out["overall"] = self.questions.get("overall") or _OVERALL[self.protocol]
        return out

    def resolved_choices(self) -> list[str]:
        """Answers allowed per question: the paper's protocol is better/tie only."""
        return ["left", "right", "tie"] if self.protocol == "paper" else list(CHOICES)

    def resolved_instructions(self) -> str:
        return self.instructions or _INSTRUCTIONS[self.protocol]


class ServerConfig(Config):
    """Where ``review serve`` listens."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the app on the network.")
    port: int = Field(8765, ge=1, le=65535, description="TCP port.")
    public_url: str = Field(
        "", description="Base URL annotators reach (for printed links), e.g. https://review.example.org behind a TLS proxy; empty = http://<host>:<port>."
    )
    max_body_bytes: int = Field(
        16384, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body accepted (bytes); larger ones answer 413 before any parsing. Votes need < 2 KiB.",
    )


class ResultsConfig(Config):
    """How ``review results`` computes and exports results."""

    out_dir: str = Field("", description="Where to write results.json, votes.csv/json and winrate.png; empty = <study_dir>/results.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap resamples (over prompts) for the win-rate intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the bootstrap intervals.")
    study: str | None = Field(None, description="Study name when the database holds several (default: the only one).")
    exclude_annotators: list[str] = Field(
        default_factory=list, description="Annotators whose votes are left out of the results (the vote log keeps them).",
    )
    min_gold_accuracy: float | None = Field(
        None, ge=0.0, le=1.0,
        description="Also leave out annotators whose accuracy on gold items is below this (null = no automatic exclusion).",
    )


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
