"""The instruction-pair stage.

One resumable ledger item per (entity, dimension): ask for ``pairs_per_request`` pairs and
validate each (drop reasons ``too_short``, ``too_long``, ``identical``, ``missing_entity``, and
``duplicate_pair`` for a pair already kept). A failed request counts under
``request:pairs:<reason>``.

Manifest counts are pairs: ``in`` every pair proposed, ``out`` rows of pairs.parquet.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from instructengine.backends import (
    InstructionBackend,
    backend_usage,
    fingerprint_of,
    item_key,
    ledger_name,
    ledgered,
    normalize_text,
    run_bounded,
    stable_id,
    usage_since,
    usage_totals,
)
from instructengine.entities.stage import read_entities
from instructengine.instructions.config import PairsConfig
from instructengine.instructions.validate import check_pair
from instructengine.runs import Manifest, StageDir, atomic_write_parquet, keep_nonempty

__all__ = ["PAIR_COLUMNS", "STAGE", "dimensions_for", "read_pairs", "run_pairs", "run_pairs_async"]

STAGE = "instructions"

#: column -> meaning (pairs.parquet)
PAIR_COLUMNS = {
    "pair_id": "stable id: hash of (entity_id, dimension, index)",
    "entity_id": "id of the entity (entities.parquet)",
    "theme": "primary theme",
    "subtopic": "subtopic",
    "entity": "entity both instructions mention",
    "dimension": "content | counterfactual | aesthetics",
    "instruction_1": "instruction x1",
    "instruction_2": "instruction x2, contrasting with x1 along the dimension",
}


def dimensions_for(entity_id: str, dimensions: list[str], k: int | None) -> list[str]:
    """The ``k`` dimensions asked for an entity: a hash-chosen rotation, so each dimension gets
    about the same share and an entity always gets the same ones."""
    if k is None or k >= len(dimensions):
        return list(dimensions)
    start = int(hashlib.sha1(entity_id.encode()).hexdigest(), 16) % len(dimensions)
    return [dimensions[(start + i) % len(dimensions)] for i in range(k)]


async def run_pairs_async(
    cfg: PairsConfig, run_dir: str | Path, backend: InstructionBackend, entities: Any = None
) -> Manifest:
    """Run (or resume) the pair stage in ``<run_dir>/instructions``; return its manifest.

    ``entities`` (a DataFrame with the entities.parquet columns) defaults to the entities stage's output.
    """
    stage = StageDir(run_dir, STAGE)
    manifest = stage.new_manifest(cfg)
    usage_before = backend_usage(backend)
    if entities is None:
        entities = read_entities(run_dir)
        manifest.inputs["entities"] = str(Path(run_dir) / "entities" / "entities.parquet")
    records = entities.to_dict("records")
    jobs = [(e, dim) for e in records for dim in dimensions_for(e["entity_id"], list(cfg.dimensions), cfg.dimensions_per_entity)]
    answer_cfg = cfg.model_dump(exclude={"concurrency", "retry_dropped", "min_words", "max_words", "require_entity"})
    ledger = stage.ledger(ledger_name(STAGE, answer_cfg, fingerprint_of(backend)))

    async def one(job: tuple[dict[str, Any], str]) -> None:
        e, dim = job

        async def work() -> dict[str, Any]:
            pairs = await backend.contrast_pairs(e["theme"], e["subtopic"], e["entity"], dim, cfg.pairs_per_request)
            return {"pairs": [list(p) for p in pairs]}

        await ledgered(ledger, item_key(e["entity_id"], dim), work, cfg.retry_dropped)

    try:
        with manifest.timed("requests"):
            await run_bounded(jobs, one, cfg.concurrency)
    finally:
        ledger.close()

    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for e, dim in jobs:
        rec = ledger.get(item_key(e["entity_id"], dim))
        assert rec is not None
        if rec["status"] == "dropped":
            manifest.drop(f"request:pairs:{rec['reason']}")
            continue
        for index, (x1, x2) in enumerate(rec["pairs"]):
            manifest.count_in += 1
            x1, x2 = " ".join(str(x1).split()), " ".join(str(x2).split())
            reason = check_pair(x1, x2, e["entity"], cfg.min_words, cfg.max_words, cfg.require_entity)
            key = (normalize_text(x1), normalize_text(x2))
            if reason is None and key in seen:
                reason = "duplicate_pair"
            if reason is not None:
                manifest.drop(reason)
                continue
            seen.add(key)
            rows.append(
                {
                    "pair_id": stable_id(e["entity_id"], dim, str(index)),
                    "entity_id": e["entity_id"],
                    "theme": e["theme"],
                    "subtopic": e["subtopic"],
                    "entity": e["entity"],
                    "dimension": dim,
                    "instruction_1": x1,
                    "instruction_2": x2,
                }
            )
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    keep_nonempty(stage.path("pairs.parquet"), len(table), STAGE, _top_drops(manifest))
    out = atomic_write_parquet(stage.path("pairs.parquet"), table)
    manifest.outputs["pairs"] = str(out)
    manifest.count_out = len(table)
    manifest.extra.update(
        entities=len(records),
        requests=len(jobs),
        pairs_per_dimension={d: int((table["dimension"] == d).sum()) for d in cfg.dimensions},
        backend=fingerprint_of(backend),
        llm_usage=usage_since(backend, usage_before),
        llm_usage_all_runs=usage_totals(backend, ["contrast_pairs"]),
    )
    stage.write_manifest(manifest)
    return manifest


def read_pairs(run_dir: str | Path) -> Any:
    """``<run_dir>/instructions/pairs.parquet`` as a DataFrame (checked for its columns)."""
    import pandas as pd

    path = Path(run_dir) / STAGE / "pairs.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no instruction pairs at {str(path)!r}; run the instructions stage first")
    df = pd.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(PAIR_COLUMNS)}")
    return df


def run_pairs(cfg: PairsConfig, run_dir: str | Path, backend: InstructionBackend) -> Manifest:
    """Synchronous wrapper of :func:`run_pairs_async`."""
    return asyncio.run(run_pairs_async(cfg, run_dir, backend))


def _top_drops(manifest: Manifest) -> str:
    return "dropped " + (", ".join(f"{r}: {n}" for r, n in manifest.dropped.most_common(3)) or "nothing: no input")
