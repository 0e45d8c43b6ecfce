"""Configuration of the entities stage."""

from __future__ import annotations

from pydantic import Field, field_validator

from instructengine.config import Config

__all__ = ["EntitiesConfig"]


class EntitiesConfig(Config):
    """Per subtopic: ask for entities, drop the ones far from the subtopic, confirm the rest."""

    per_subtopic: int = Field(25, ge=1, description="Entities asked per subtopic (paper: 15,000 over 800 subtopics kept).")
    similarity_threshold: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="Minimum text-embedding cosine between an entity and its subtopic (CLIP in the paper); lower "
        "is dropped as far_from_subtopic. Scale depends on the embedder: the manifest records quantiles to tune it.",
    )
    subtopic_text: str = Field("{subtopic}", description="Text embedded for a subtopic; may use {theme} and {subtopic}.")
    entity_text: str = Field("{entity}", description="Text embedded for an entity; may use {entity}, {theme}, {subtopic}.")
    dedupe_threshold: float | None = Field(
        0.95, ge=-1, le=1.0001, description="Cosine at or above which two entities of one subtopic count as one; null: exact names only."
    )
    max_words: int = Field(8, ge=1, description="Entities with more words are dropped (too_long_name): they are descriptions.")
    confirm: bool = Field(True, description="Ask the backend to confirm each kept entity (yes/no).")
    concurrency: int = Field(64, ge=1, description="Subtopics worked on at once (HTTP concurrency is bounded by the client).")
    retry_dropped: bool = Field(False, description="On resume, redo every dropped subtopic request and failed confirmation, permanent drops (invalid answers) included; transient ones (server unavailable) are redone anyway.")

    @field_validator("subtopic_text", "entity_text")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            value.format(theme="t", subtopic="s", entity="e")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"template {value!r} may only use {{theme}}, {{subtopic}}, {{entity}} ({err})") from None
        return value
