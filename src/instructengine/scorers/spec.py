"""The one config of a scorer, shared by the data pipeline (best-of-N, baselines) and evaluation."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config

__all__ = ["ScorerSpec"]


class ScorerSpec(Config):
    """A scorer: which one (``kind``), its options, and where it runs. A bare string is a kind with defaults."""

    kind: str = Field(
        description="A registered scorer (pickscore, imagereward, hpsv2, clip, blip, aesthetic, ict, hp, vqa, or a "
        "bundle's, e.g. shapes_clip) or an import path 'package.module:factory'."
    )
    name: str | None = Field(
        None, description="Label of this scorer (its column in evaluation tables; the key of per-entry overrides); "
        "default: the kind. Two entries of one kind need two names."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Options of the scorer factory (e.g. checkpoint paths).")
    column: str | None = Field(None, description="Data pipeline: for scorers returning several columns, the one used (null: the first).")
    device: str | None = Field(None, description="torch device of the scorer (null: the stage's device; data pipeline: cpu).")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Scorer weights dtype (null: the stage's, float32 by default)."
    )
    batch_size: int = Field(64, ge=1, description="Data pipeline: images per score() call (whole instructions are kept together).")

    @model_validator(mode="before")
    @classmethod
    def _bare_kind(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("scorer", v)

    @property
    def label(self) -> str:
        return self.name or self.kind

    def fingerprint(self) -> str:
        """What determines the scores (not the device or batch size): label + short hash."""
        data = self.model_dump(mode="json", include={"kind", "options", "column"})
        data["dtype"] = self.dtype or "float32"
        blob = json.dumps(data, sort_keys=True)
        return f"{self.label.replace(':', '.').replace('/', '.')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
