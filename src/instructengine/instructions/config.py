"""Configuration of the instruction-pair stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from instructengine.config import Config

__all__ = ["DIMENSION_NAMES", "PairsConfig"]

#: the contrast dimensions, as in instructengine.data.schema.DIMENSIONS (kept equal by a test;
#: spelled out here so loading a config does not import pandas)
Dimension = Literal["content", "counterfactual", "aesthetics"]
DIMENSION_NAMES: tuple[str, ...] = Dimension.__args__  # type: ignore[attr-defined]


class PairsConfig(Config):
    """For each entity and dimension, ask for contrasting pairs (x1, x2) and validate them."""

    dimensions: list[Dimension] = Field(
        default_factory=lambda: list(DIMENSION_NAMES), description="Contrast dimensions used (content, counterfactual, aesthetics)."
    )
    dimensions_per_entity: int | None = Field(
        None,
        ge=1,
        description="Dimensions asked per entity, chosen by a hash of the entity so they are balanced and stable; "
        "null: all. (The paper's 26,430 pairs from 15,000 entities suggest fewer than three per entity.)",
    )
    pairs_per_request: int = Field(1, ge=1, description="Pairs asked per (entity, dimension).")
    min_words: int = Field(4, ge=1, description="Instructions with fewer words are dropped (too_short).")
    max_words: int = Field(60, ge=1, description="Instructions with more words are dropped (too_long); CLIP reads 77 tokens.")
    require_entity: bool = Field(True, description="Both instructions must mention the entity (missing_entity otherwise).")
    concurrency: int = Field(64, ge=1, description="Requests this stage keeps in flight (the client also bounds HTTP concurrency).")
    retry_dropped: bool = Field(False, description="On resume, redo every dropped request, permanent drops (invalid answers) included; transient ones (server unavailable) are redone anyway.")

    @model_validator(mode="after")
    def _check(self) -> "PairsConfig":
        if not self.dimensions or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"dimensions must be a non-empty list without repeats, got {self.dimensions}")
        if self.dimensions_per_entity is not None and self.dimensions_per_entity > len(self.dimensions):
            raise ValueError(
                f"dimensions_per_entity={self.dimensions_per_entity} exceeds the {len(self.dimensions)} dimensions listed"
            )
        if self.min_words > self.max_words:
            raise ValueError(f"min_words={self.min_words} > max_words={self.max_words}")
        return self
