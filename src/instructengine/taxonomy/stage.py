"""The taxonomy stage: seed themes -> primary themes -> subtopics along axes.

Steps (each request is a resumable ledger item; the assembly is a pure function of the ledger, so
an interrupted and resumed run writes the same files as an uninterrupted one):

1. ``theme_samples`` theme-list requests; candidates are ranked seeds first, then by how many
   samples proposed them, then by first appearance; near-duplicates (embedding cosine >=
   ``dedupe_threshold``) merge into the earlier name; the first ``n_themes`` are kept.
2. per theme, per axis, ``subtopic_samples`` subtopic-list requests; candidates are taken round
   robin over the axes (each axis ranked like themes), merged the same way, and the first
   ``subtopics_per_theme`` kept.
3. ``taxonomy.json`` and ``review.csv`` are written. An edited review.csv is never overwritten
   while the taxonomy it refers to is unchanged; if the taxonomy changed, the old file is kept
   as ``review.<time>.csv`` and a fresh one is written.

Manifest counts are subtopics: ``in`` distinct candidates, ``out`` kept. Drop reasons:
``theme_near_duplicate``, ``theme_beyond_target``, ``subtopic_near_duplicate``,
``subtopic_beyond_target``, and ``request:themes:<reason>`` / ``request:subtopics:<reason>`` for
requests that failed (one count per request).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from instructengine.backends import (
    InstructionBackend,
    TextEmbedder,
    backend_usage,
    clean_name,
    fingerprint_of,
    greedy_merge,
    item_key,
    ledger_name,
    ledgered,
    normalize_text,
    run_bounded,
    usage_since,
    usage_totals,
)
from instructengine.runs import EmptyArtifactError, Manifest, StageDir, atomic_write_text
from instructengine.taxonomy.config import TaxonomyConfig
from instructengine.taxonomy.model import Subtopic, Taxonomy, Theme
from instructengine.taxonomy.review import export_review

__all__ = ["STAGE", "run_taxonomy", "run_taxonomy_async"]

STAGE = "taxonomy"


def _rank(samples: list[list[str]]) -> list[str]:
    """Distinct names (by normalised form) ordered by frequency over samples, then first appearance."""
    freq: Counter[str] = Counter()
    first: dict[str, tuple[int, str]] = {}
    position = 0
    for items in samples:
        seen_here: set[str] = set()
        for raw in items:
            name = clean_name(raw)
            key = normalize_text(name)
            if not key:
                continue
            if key not in first:
                first[key] = (position, name)
                position += 1
            if key not in seen_here:
                freq[key] += 1
                seen_here.add(key)
    order = sorted(first, key=lambda k: (-freq[k], first[k][0]))
    return [first[k][1] for k in order]


def _round_robin(lists: list[list[str]]) -> list[tuple[int, str]]:
    """Interleave ranked lists (axis index, name), skipping names already taken from another axis."""
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for depth in range(max((len(x) for x in lists), default=0)):
        for axis, names in enumerate(lists):
            if depth < len(names):
                key = normalize_text(names[depth])
                if key not in seen:
                    seen.add(key)
                    out.append((axis, names[depth]))
    return out


async def run_taxonomy_async(
    cfg: TaxonomyConfig, run_dir: str | Path, backend: InstructionBackend, embedder: TextEmbedder
) -> Manifest:
    """Run (or resume) the taxonomy stage in ``<run_dir>/taxonomy``; return its manifest.

    Raises whatever the backend raises that is not a DropItem (e.g. PermanentLLMError).
    """
    stage = StageDir(run_dir, STAGE)
    manifest = stage.new_manifest(cfg)
    usage_before = backend_usage(backend)
    answer_cfg = cfg.model_dump(exclude={"concurrency", "retry_dropped"})
    ledger = stage.ledger(ledger_name(STAGE, answer_cfg, fingerprint_of(backend)))
    n_theme_req = cfg.per_request_themes()
    n_sub_req = cfg.per_request_subtopics()
    try:
        # 1. themes
        async def theme_request(sample: int) -> None:
            async def work() -> dict[str, Any]:
                return {"items": await backend.propose_themes(list(cfg.seeds), n_theme_req, sample)}

            await ledgered(ledger, item_key("themes", sample), work, cfg.retry_dropped)

        with manifest.timed("theme_requests"):
            await run_bounded(range(cfg.theme_samples), theme_request, cfg.concurrency)
        theme_samples = [_items(ledger.get(item_key("themes", i)), manifest, "themes") for i in range(cfg.theme_samples)]
        with manifest.timed("theme_merge"):
            themes = await asyncio.to_thread(_pick_themes, cfg, theme_samples, embedder, manifest)

        # 2. subtopics
        jobs = [(t.name, axis, s) for t in themes for axis in cfg.axes for s in range(cfg.subtopic_samples)]

        async def subtopic_request(job: tuple[str, str, int]) -> None:
            theme, axis, sample = job

            async def work() -> dict[str, Any]:
                return {"items": await backend.propose_subtopics(theme, axis, n_sub_req, sample)}

            await ledgered(ledger, item_key("subtopics", *job), work, cfg.retry_dropped)

        with manifest.timed("subtopic_requests"):
            await run_bounded(jobs, subtopic_request, cfg.concurrency)
        with manifest.timed("subtopic_merge"):
            for theme in themes:
                per_axis = [
                    _rank([_items(ledger.get(item_key("subtopics", theme.name, axis, s)), manifest, "subtopics") for s in range(cfg.subtopic_samples)])
                    for axis in cfg.axes
                ]
                theme.subtopics = await asyncio.to_thread(_pick_subtopics, cfg, per_axis, embedder, manifest)
    finally:
        ledger.close()

    taxonomy = Taxonomy(axes=list(cfg.axes), themes=themes)
    _write_outputs(stage, taxonomy, manifest)
    manifest.count_out = taxonomy.n_subtopics
    manifest.extra.update(
        themes=len(taxonomy.themes),
        subtopics=taxonomy.n_subtopics,
        themes_short_of_target=max(0, cfg.n_themes - len(taxonomy.themes)),
        themes_with_fewer_subtopics=sum(1 for t in taxonomy.themes if len(t.subtopics) < cfg.subtopics_per_theme),
        requests=len(ledger),
        backend=fingerprint_of(backend),
        embedder=fingerprint_of(embedder),
        llm_usage=usage_since(backend, usage_before),
        llm_usage_all_runs=usage_totals(backend, ["themes", "subtopics"]),
    )
    stage.write_manifest(manifest)
    return manifest


def _items(rec: dict[str, Any] | None, manifest: Manifest, what: str) -> list[str]:
    if rec is None:  # cannot happen after run_bounded returned; guard against a corrupted ledger
        raise RuntimeError(f"taxonomy ledger lacks a {what} request that was just run")
    if rec["status"] == "dropped":
        manifest.drop(f"request:{what}:{rec['reason']}")
        return []
    return list(rec["items"])


def _drop(manifest: Manifest, reason: str, n: int) -> None:
    if n:  # keep the manifest's counter free of zero entries
        manifest.drop(reason, n)


def _pick_themes(cfg: TaxonomyConfig, samples: list[list[str]], embedder: TextEmbedder, manifest: Manifest) -> list[Theme]:
    seeds = list(cfg.seeds) if cfg.keep_seeds else []
    seed_keys = {normalize_text(s) for s in seeds}
    ranked = seeds + [n for n in _rank(samples) if normalize_text(n) not in seed_keys]
    kept, merged, left = greedy_merge(ranked, embedder, cfg.dedupe_threshold, limit=cfg.n_themes)
    _drop(manifest, "theme_near_duplicate", len(merged))
    _drop(manifest, "theme_beyond_target", len(left))
    manifest.extra["theme_candidates"] = len(ranked)
    aliases = defaultdict(list)
    for i, j in merged.items():
        aliases[j].append(ranked[i])
    return [
        Theme(name=ranked[i], source="seed" if i < len(seeds) else "proposed", aliases=aliases[i])
        for i in kept
    ]


def _pick_subtopics(cfg: TaxonomyConfig, per_axis: list[list[str]], embedder: TextEmbedder, manifest: Manifest) -> list[Subtopic]:
    order = _round_robin(per_axis)
    names = [name for _, name in order]
    kept, merged, left = greedy_merge(names, embedder, cfg.dedupe_threshold, limit=cfg.subtopics_per_theme)
    manifest.count_in += len(names)
    _drop(manifest, "subtopic_near_duplicate", len(merged))
    _drop(manifest, "subtopic_beyond_target", len(left))
    aliases = defaultdict(list)
    for i, j in merged.items():
        aliases[j].append(names[i])
    return [Subtopic(name=names[i], axis=cfg.axes[order[i][0]], aliases=aliases[i]) for i in kept]


def _write_outputs(stage: StageDir, taxonomy: Taxonomy, manifest: Manifest) -> None:
    tax_path, review_path = stage.path("taxonomy.json"), stage.path("review.csv")
    new_json = taxonomy.to_json()
    old_json = tax_path.read_text(encoding="utf-8") if tax_path.is_file() else None
    if taxonomy.n_subtopics == 0 and old_json is not None:
        try:
            old_n = Taxonomy.model_validate_json(old_json).n_subtopics
        except Exception:
            old_n = 0
        if old_n:
            drops = ", ".join(f"{r}: {n}" for r, n in manifest.dropped.most_common(3)) or "no input"
            raise EmptyArtifactError(
                f"stage 'taxonomy' kept no subtopic (dropped {drops}), and {tax_path} holds {old_n} subtopics "
                "from an earlier run: it was left as it is. Fix the cause and run the stage again"
            )
    fresh_csv = export_review(taxonomy)
    status = "written"
    if review_path.is_file():
        current = review_path.read_text(encoding="utf-8-sig")
        if current == fresh_csv:
            status = "unchanged"
        elif old_json == new_json:
            status = "kept (edited by a person; the taxonomy it refers to is unchanged)"
        else:
            backup = stage.path(f"review.{time.strftime('%Y%m%d-%H%M%S')}.csv")
            review_path.replace(backup)
            status = f"taxonomy changed: the edited file was moved to {backup.name} and a fresh one written"
    if old_json != new_json:
        atomic_write_text(tax_path, new_json)
    if status.startswith(("written", "taxonomy changed")):
        atomic_write_text(review_path, fresh_csv)
    manifest.outputs.update(taxonomy=str(tax_path), review=str(review_path))
    manifest.extra["review_csv"] = status


def run_taxonomy(cfg: TaxonomyConfig, run_dir: str | Path, backend: InstructionBackend, embedder: TextEmbedder) -> Manifest:
    """Synchronous wrapper of :func:`run_taxonomy_async`."""
    return asyncio.run(run_taxonomy_async(cfg, run_dir, backend, embedder))
