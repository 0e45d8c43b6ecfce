"""The text half of the data pipeline in one call: taxonomy -> entities -> instruction pairs.

:class:`TextPipelineConfig` is the whole configuration (``configs/data_llm.yaml`` is one);
:func:`run_text_stages` builds the backend and embedder it names and runs the chosen stages in
order in ``run_dir``. Every stage resumes from its ledger, and LLM answers come from the SQLite
cache, so re-running after a crash, a kill or an edit of ``review.csv`` repeats no request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from instructengine.backends import BackendConfig, EmbedderConfig, InstructionBackend, TextEmbedder, build_embedder
from instructengine.config import Config, save_resolved
from instructengine.entities.config import EntitiesConfig
from instructengine.instructions.config import PairsConfig
from instructengine.llm.config import LLMConfig
from instructengine.runs import Manifest
from instructengine.taxonomy.config import TaxonomyConfig
from instructengine.errors import UsageError

__all__ = ["STAGES", "EmptyStageError", "TextPipelineConfig", "build_backend", "run_text_stages", "run_text_stages_async"]

STAGES = ("taxonomy", "entities", "pairs")


class TextPipelineConfig(Config):
    """Configuration of the three text stages and of what they talk to."""

    run_dir: str = Field("runs/data", description="Run folder; each stage writes <run_dir>/<stage>/.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="Instruction backend (LLM or a Python factory).")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="Chat client settings (used when backend.kind=llm).")
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig, description="Text embedder for merging and the entity filter.")
    taxonomy: TaxonomyConfig = Field(default_factory=TaxonomyConfig, description="Stage 1: themes and subtopics.")
    entities: EntitiesConfig = Field(default_factory=EntitiesConfig, description="Stage 2: entities per subtopic.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Stage 3: contrasting instruction pairs.")


def build_backend(cfg: TextPipelineConfig) -> tuple[InstructionBackend, Any]:
    """(backend, client or None). The client, when there is one, must be closed (``await client.aclose()``)."""
    if cfg.backend.kind == "llm":
        from instructengine.llm import build_client
        from instructengine.llm.backend import LLMInstructionBackend

        client = build_client(cfg.llm, cfg.run_dir)
        return LLMInstructionBackend(client), client
    from instructengine import registry

    backend = registry.instantiate("instruction_backend", cfg.backend.kind, where="backend.kind", **cfg.backend.options)
    missing = [m for m in ("propose_themes", "propose_subtopics", "propose_entities", "confirm_entity", "contrast_pairs") if not hasattr(backend, m)]
    if missing:
        raise ValueError(f"backend kind {cfg.backend.kind!r} built {type(backend).__name__}, which lacks {missing}")
    return backend, None


async def run_text_stages_async(
    cfg: TextPipelineConfig,
    stages: Sequence[str] = STAGES,
    backend: InstructionBackend | None = None,
    embedder: TextEmbedder | None = None,
) -> dict[str, Manifest]:
    """Run ``stages`` (a subset of :data:`STAGES`, run in pipeline order) and return their manifests.

    ``backend``/``embedder`` default to what ``cfg`` names. Raises ValueError for an unknown stage
    and :class:`EmptyStageError` when a stage kept nothing (its manifest is written first), and
    lets a PermanentLLMError (wrong key, unknown model...) through unchanged.
    """
    from instructengine.entities.stage import run_entities_async
    from instructengine.instructions.stage import run_pairs_async
    from instructengine.taxonomy.stage import run_taxonomy_async

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir / "text_pipeline.yaml")
    client = None
    if backend is None:
        backend, client = build_backend(cfg)
    if embedder is None and any(s in stages for s in ("taxonomy", "entities")):
        embedder = await asyncio.to_thread(build_embedder, cfg.embedder)
    manifests: dict[str, Manifest] = {}
    try:
        for name in STAGES:
            if name not in stages:
                continue
            if name == "taxonomy":
                manifests[name] = await run_taxonomy_async(cfg.taxonomy, run_dir, backend, embedder)
            elif name == "entities":
                manifests[name] = await run_entities_async(cfg.entities, run_dir, backend, embedder)
            else:
                manifests[name] = await run_pairs_async(cfg.pairs, run_dir, backend)
            _require_output(name, manifests[name])
    finally:
        if client is not None:
            await client.aclose()
    return manifests


class EmptyStageError(UsageError, ValueError):
    """A stage kept nothing (every item dropped), so the next stage would have no input."""


def _require_output(name: str, manifest: Manifest) -> None:
    if manifest.count_out == 0:
        top = ", ".join(f"{reason}: {n}" for reason, n in manifest.dropped.most_common(4)) or "no items"
        transient = sum(n for r, n in manifest.dropped.items() if "unavailable:" in r)
        retry = (
            f"{transient} drop(s) were the server being unavailable: they are retried by the next run "
            "(just run it again once the server is back); "
            if transient else ""
        )
        raise EmptyStageError(
            f"stage {name!r} kept nothing (in {manifest.count_in}; dropped {top}); "
            f"its manifest is in {manifest.stage}/manifest.json. {retry}"
            f"Check the server, the model and the thresholds; {name}.retry_dropped=true retries every dropped item"
        )


def run_text_stages(
    cfg: TextPipelineConfig,
    stages: Sequence[str] = STAGES,
    backend: InstructionBackend | None = None,
    embedder: TextEmbedder | None = None,
) -> dict[str, Manifest]:
    """Synchronous wrapper of :func:`run_text_stages_async`."""
    return asyncio.run(run_text_stages_async(cfg, stages, backend, embedder))
