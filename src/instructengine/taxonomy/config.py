"""Configuration of the taxonomy stage."""

from __future__ import annotations

from pydantic import Field, field_validator

from instructengine.config import Config

__all__ = ["PAPER_AXES", "PAPER_SEEDS", "TaxonomyConfig"]

PAPER_SEEDS = ["people", "animals", "landscapes", "scenes", "architecture", "art & abstraction"]
PAPER_AXES = ["theme", "style", "purpose", "time and space", "vertical domain"]


class TaxonomyConfig(Config):
    """Seed themes -> ``n_themes`` primary themes -> ``subtopics_per_theme`` subtopics each."""

    seeds: list[str] = Field(default_factory=lambda: list(PAPER_SEEDS), description="Seed themes (the paper's six).")
    keep_seeds: bool = Field(True, description="Seed themes are always primary themes (ranked first).")
    n_themes: int = Field(40, ge=1, description="Target number of primary themes (paper: ~40).")
    theme_samples: int = Field(3, ge=1, description="Independent theme-list requests whose answers are pooled.")
    themes_per_request: int | None = Field(None, ge=1, description="Themes asked per request; unset: n_themes.")
    axes: list[str] = Field(default_factory=lambda: list(PAPER_AXES), description="Axes along which each theme is divided.")
    subtopics_per_theme: int = Field(20, ge=1, description="Target subtopics per theme (paper: 800 over 40 themes).")
    subtopic_samples: int = Field(2, ge=1, description="Independent requests per (theme, axis) whose answers are pooled.")
    subtopics_per_request: int | None = Field(
        None, ge=1, description="Subtopics asked per (theme, axis) request; unset: ceil(subtopics_per_theme / len(axes)) + 1."
    )
    dedupe_threshold: float = Field(
        0.9, ge=-1, le=1.0001, description="Embedding cosine at or above which two names count as one (later merged into earlier)."
    )
    concurrency: int = Field(64, ge=1, description="Requests this stage keeps in flight (the client also bounds HTTP concurrency).")
    retry_dropped: bool = Field(False, description="On resume, redo every dropped request, permanent drops (invalid answers) included; transient ones (server unavailable) are redone anyway.")

    @field_validator("seeds", "axes")
    @classmethod
    def _non_empty_unique(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if not cleaned or any(not v for v in cleaned):
            raise ValueError("must be a non-empty list of non-empty names")
        if len({v.casefold() for v in cleaned}) != len(cleaned):
            raise ValueError(f"names must be unique, got {cleaned}")
        return cleaned

    def per_request_themes(self) -> int:
        return self.themes_per_request or self.n_themes

    def per_request_subtopics(self) -> int:
        return self.subtopics_per_request or -(-self.subtopics_per_theme // len(self.axes)) + 1
