"""The taxonomy as data (``taxonomy.json``): themes, each with subtopics tagged by axis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, Field

__all__ = ["Subtopic", "Taxonomy", "Theme"]


class Subtopic(BaseModel):
    name: str = Field(min_length=1)
    axis: str = Field(description="The axis it was proposed along (or 'review' when a person added it).")
    aliases: list[str] = Field(default_factory=list, description="Near-duplicate names merged into this one.")


class Theme(BaseModel):
    name: str = Field(min_length=1)
    source: Literal["seed", "proposed", "review"] = "proposed"
    aliases: list[str] = Field(default_factory=list)
    subtopics: list[Subtopic] = Field(default_factory=list)


class Taxonomy(BaseModel):
    axes: list[str]
    themes: list[Theme]

    def pairs(self) -> Iterator[tuple[Theme, Subtopic]]:
        for theme in self.themes:
            for sub in theme.subtopics:
                yield theme, sub

    @property
    def n_subtopics(self) -> int:
        return sum(len(t.subtopics) for t in self.themes)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, path: str | Path) -> "Taxonomy":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no taxonomy at {str(p)!r}; run the taxonomy stage first")
        return cls.model_validate_json(p.read_text(encoding="utf-8"))
