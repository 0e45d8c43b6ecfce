"""The entities stage.

Per subtopic (one resumable ledger item): ask for ``per_subtopic`` entities; clean the names;
drop exact repeats (``repeated_in_subtopic``), over-long names (``too_long_name``), entities whose
embedding cosine with the subtopic is below ``similarity_threshold`` (``far_from_subtopic``),
near-duplicates within the subtopic (``near_duplicate``); then confirm each remaining entity with
the backend (``rejected_by_check``, or ``confirm:<reason>`` when the check itself failed).
Assembly, in taxonomy order, drops an entity already kept under an earlier subtopic
(``duplicate_across_subtopics``). A subtopic whose request failed counts under
``request:entities:<reason>``.

Manifest counts are entities: ``in`` every proposed name, ``out`` rows of entities.parquet.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from instructengine.backends import (
    DropItem,
    InstructionBackend,
    TextEmbedder,
    backend_usage,
    clean_name,
    fingerprint_of,
    item_key,
    ledger_name,
    ledgered,
    normalize_text,
    run_bounded,
    should_redo,
    stable_id,
    usage_since,
    usage_totals,
)
from instructengine.entities.config import EntitiesConfig
from instructengine.runs import Manifest, StageDir, atomic_write_parquet, keep_nonempty, atomic_write_text
from instructengine.taxonomy.model import Taxonomy
from instructengine.taxonomy.review import load_reviewed_taxonomy

__all__ = ["ENTITY_COLUMNS", "STAGE", "read_entities", "run_entities", "run_entities_async"]

STAGE = "entities"

#: column -> meaning (entities.parquet)
ENTITY_COLUMNS = {
    "entity_id": "stable id: hash of (theme, subtopic, entity)",
    "theme": "primary theme",
    "subtopic": "subtopic of the theme",
    "axis": "axis the subtopic was proposed along",
    "entity": "entity name as proposed (cleaned)",
    "similarity": "embedding cosine between entity and subtopic texts",
}


async def _subtopic_work(
    cfg: EntitiesConfig, backend: InstructionBackend, embedder: TextEmbedder, theme: str, subtopic: str
) -> dict[str, Any]:
    proposed = await backend.propose_entities(theme, subtopic, cfg.per_subtopic)
    drops: Counter[str] = Counter()
    names: list[str] = []
    seen: set[str] = set()
    for raw in proposed:
        name = clean_name(raw)
        key = normalize_text(name)
        if not key:
            drops["empty_name"] += 1
        elif key in seen:
            drops["repeated_in_subtopic"] += 1
        elif len(name.split()) > cfg.max_words:
            drops["too_long_name"] += 1
        else:
            seen.add(key)
            names.append(name)
    sims: list[float] = []
    if names:
        texts = [cfg.subtopic_text.format(theme=theme, subtopic=subtopic)]
        texts += [cfg.entity_text.format(theme=theme, subtopic=subtopic, entity=n) for n in names]
        vecs = await asyncio.to_thread(embedder.embed, texts)
        sims = [float(x) for x in vecs[1:] @ vecs[0]]
        kept: list[int] = []
        for i, sim in enumerate(sims):
            if sim < cfg.similarity_threshold:
                drops["far_from_subtopic"] += 1
                continue
            if cfg.dedupe_threshold is not None and kept and float(np.max(vecs[1:][kept] @ vecs[1 + i])) >= cfg.dedupe_threshold:
                drops["near_duplicate"] += 1
                continue
            kept.append(i)
    else:
        kept = []

    candidates = [{"entity": names[i], "similarity": round(sims[i], 6)} for i in kept]
    entities, unconfirmed = await _confirm(cfg, backend, theme, subtopic, candidates, drops)
    return {
        "proposed": len(proposed), "entities": entities, "unconfirmed": unconfirmed, "drops": dict(drops),
        "checked": [c["entity"] for c in candidates],
        "similarities": [round(s, 4) for s in sims],
    }


async def _confirm(
    cfg: EntitiesConfig, backend: InstructionBackend, theme: str, subtopic: str,
    candidates: list[dict[str, Any]], drops: Counter[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(confirmed entities, entities whose check failed, each with its ``reason``). A rejection
    is counted in ``drops``; a failed check is kept apart so that a later run can retry it."""
    if not cfg.confirm:
        return candidates, []

    async def check(ent: dict[str, Any]) -> str | None:
        try:
            return None if await backend.confirm_entity(theme, subtopic, ent["entity"]) else "rejected_by_check"
        except DropItem as drop:
            return f"confirm:{drop.reason}"

    verdicts = await asyncio.gather(*(check(e) for e in candidates))
    entities, unconfirmed = [], []
    for ent, verdict in zip(candidates, verdicts):
        if verdict is None:
            entities.append(ent)
        elif verdict == "rejected_by_check":
            drops[verdict] += 1
        else:
            unconfirmed.append({**ent, "reason": verdict})
    return entities, unconfirmed


async def _recheck(
    cfg: EntitiesConfig, backend: InstructionBackend, ledger: Any, key: str, theme: str, subtopic: str
) -> None:
    """Retry the failed confirmations of a finished subtopic (transient ones always, all with
    ``retry_dropped``) and store the subtopic's record again with the outcome, in the same order."""
    rec = ledger.get(key)
    if rec is None or rec.get("status") != "done":
        return
    unconfirmed = rec.get("unconfirmed") or []
    redo = [u for u in unconfirmed if should_redo(u["reason"].removeprefix("confirm:"), cfg.retry_dropped)]
    if not redo:
        return
    drops: Counter[str] = Counter(rec["drops"])
    got, still = await _confirm(cfg, backend, theme, subtopic, [{k: u[k] for k in ("entity", "similarity")} for u in redo], drops)
    kept_before = [u for u in unconfirmed if u not in redo]
    # the filter's order (that of an uninterrupted run), not the order checks came back in
    rank = {name: i for i, name in enumerate(rec.get("checked") or [])}
    order = lambda e: rank.get(e["entity"], len(rank))  # noqa: E731
    fields = {k: v for k, v in rec.items() if k != "key"}
    fields.update(
        entities=sorted([*rec["entities"], *got], key=order),
        unconfirmed=sorted([*kept_before, *still], key=order),
        drops=dict(drops),
    )
    ledger.add(key, **fields)


async def run_entities_async(
    cfg: EntitiesConfig,
    run_dir: str | Path,
    backend: InstructionBackend,
    embedder: TextEmbedder,
    taxonomy: Taxonomy | None = None,
) -> Manifest:
    """Run (or resume) the entities stage in ``<run_dir>/entities``; return its manifest.

    ``taxonomy`` defaults to ``<run_dir>/taxonomy/taxonomy.json`` with its review.csv applied.
    """
    stage = StageDir(run_dir, STAGE)
    manifest = stage.new_manifest(cfg)
    usage_before = backend_usage(backend)
    if taxonomy is None:
        tax_dir = Path(run_dir) / "taxonomy"
        taxonomy, review_counts = load_reviewed_taxonomy(tax_dir)
        manifest.inputs["taxonomy"] = str(tax_dir / "taxonomy.json")
        manifest.extra["review_edits"] = review_counts
    atomic_write_text(stage.path("reviewed_taxonomy.json"), taxonomy.to_json())
    answer_cfg = cfg.model_dump(exclude={"concurrency", "retry_dropped"})
    ledger = stage.ledger(ledger_name(STAGE, answer_cfg, fingerprint_of(backend), fingerprint_of(embedder)))
    jobs = [(t.name, s.name) for t, s in taxonomy.pairs()]

    async def one(job: tuple[str, str]) -> None:
        key = item_key(*job)
        earlier = ledger.get(key)  # checks that failed in an earlier run are retried, not this run's
        await ledgered(ledger, key, lambda: _subtopic_work(cfg, backend, embedder, *job), cfg.retry_dropped)
        if earlier is not None and earlier.get("status") == "done":
            await _recheck(cfg, backend, ledger, key, *job)

    try:
        with manifest.timed("subtopics"):
            await run_bounded(jobs, one, cfg.concurrency)
    finally:
        ledger.close()

    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    all_sims: list[float] = []
    for theme, sub in taxonomy.pairs():
        rec = ledger.get(item_key(theme.name, sub.name))
        assert rec is not None
        if rec["status"] == "dropped":
            manifest.drop(f"request:entities:{rec['reason']}")
            continue
        manifest.count_in += rec["proposed"]
        all_sims += rec["similarities"]
        for reason, n in rec["drops"].items():
            manifest.drop(reason, n)
        for failed in rec.get("unconfirmed") or []:
            manifest.drop(failed["reason"])
        for ent in rec["entities"]:
            key = normalize_text(ent["entity"])
            if key in taken:
                manifest.drop("duplicate_across_subtopics")
                continue
            taken.add(key)
            rows.append(
                {
                    "entity_id": stable_id(theme.name, sub.name, ent["entity"]),
                    "theme": theme.name,
                    "subtopic": sub.name,
                    "axis": sub.axis,
                    "entity": ent["entity"],
                    "similarity": float(ent["similarity"]),
                }
            )
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(ENTITY_COLUMNS))
    table["similarity"] = table["similarity"].astype("float64")
    keep_nonempty(stage.path("entities.parquet"), len(table), STAGE, _top_drops(manifest))
    out = atomic_write_parquet(stage.path("entities.parquet"), table)
    manifest.outputs["entities"] = str(out)
    manifest.count_out = len(table)
    quantiles = np.quantile(all_sims, [0.05, 0.25, 0.5, 0.75, 0.95]).round(4).tolist() if all_sims else []
    manifest.extra.update(
        subtopics=len(jobs),
        similarity_quantiles_5_25_50_75_95=quantiles,
        backend=fingerprint_of(backend),
        embedder=fingerprint_of(embedder),
        llm_usage=usage_since(backend, usage_before),
        llm_usage_all_runs=usage_totals(backend, ["entities", "confirm_entity"]),
    )
    stage.write_manifest(manifest)
    return manifest


def read_entities(run_dir: str | Path) -> "Any":
    """``<run_dir>/entities/entities.parquet`` as a DataFrame (checked for its columns)."""
    import pandas as pd

    path = Path(run_dir) / STAGE / "entities.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no entities at {str(path)!r}; run the entities stage first")
    df = pd.read_parquet(path)
    missing = [c for c in ENTITY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(ENTITY_COLUMNS)}")
    return df


def run_entities(cfg: EntitiesConfig, run_dir: str | Path, backend: InstructionBackend, embedder: TextEmbedder) -> Manifest:
    """Synchronous wrapper of :func:`run_entities_async`."""
    return asyncio.run(run_entities_async(cfg, run_dir, backend, embedder))


def _top_drops(manifest: Manifest) -> str:
    return "dropped " + (", ".join(f"{r}: {n}" for r, n in manifest.dropped.most_common(3)) or "nothing: no input")
