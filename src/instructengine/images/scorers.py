"""The data pipeline's use of the scorers: building one from its spec, and the resumable per-candidate score cache.

A scorer has ``name`` and ``score(images, prompts) -> np.ndarray`` (one value per image, or one
row per image for multi-column scorers; NaN = not measured); any kind of :mod:`instructengine.scorers`
serves (``blip``, ``hpsv2``, ``clip``, ``pickscore``, ``imagereward``, ``aesthetic``, ``vqa``, a
bundle's, or ``package.module:factory``): the same scorers as the evaluation harness.

:func:`score_candidates` scores candidate images once per (scorer, generator): results are kept
in ``<run_dir>/scores/<scorer>-<generator>.jsonl`` (one fsynced line per scorer call), so the
select stage and the baselines share scores, and a killed run re-scores at most one call.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from instructengine.scorers.spec import ScorerSpec
from instructengine.runs import Ledger

__all__ = ["build_image_scorer", "load_rgb", "score_candidates"]


def build_image_scorer(spec: ScorerSpec, run_dir: str | Path | None = None) -> Any:
    """The scorer ``spec`` names (weights are loaded here). Scorers that call an LLM (``vqa``)
    keep their cache under ``<run_dir>/scores/``.

    Raises:
        ValueError: unknown scorer name or bad options (the message lists what is allowed).
    """
    from instructengine.scorers.base import ScorerContext, build_scorer

    context = ScorerContext(
        device=spec.device or "cpu", dtype=spec.dtype or "float32",
        run_dir=str(Path(run_dir) / "scores") if run_dir is not None else None,
    )
    return build_scorer(spec.kind, spec.options, context)


def load_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _score_column(scorer: Any, spec: ScorerSpec, images: list[Any], prompts: list[str]) -> np.ndarray:
    from instructengine.scorers.base import columns_of, score_columns

    cols = score_columns(scorer, images, prompts)
    column = spec.column or columns_of(scorer)[0]
    if column not in cols:
        raise ValueError(f"scorer {spec.label!r} has no column {column!r}; it returns {sorted(cols)}")
    return cols[column]


def score_candidates(
    run_dir: str | Path,
    spec: ScorerSpec,
    rows: Any,
    generator_fingerprint: str,
    scorer: Any = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Scores of candidate ``rows`` (candidates.parquet rows) under ``spec``, aligned with ``rows``.

    Images are read from ``<run_dir>/candidates/<image>``; the candidates of one instruction are
    scored in the same call. ``scorer`` defaults to :func:`build_image_scorer` ``(spec)`` (built
    only when something is left to score). Returns (scores, {"cached": n, "computed": m}).
    """
    run_dir = Path(run_dir)
    gen_digest = hashlib.sha256(generator_fingerprint.encode()).hexdigest()[:8]
    ledger = Ledger(run_dir / "scores" / f"{spec.fingerprint()}-gen{gen_digest}.jsonl")
    known: dict[str, float] = {}
    for rec in ledger.records():
        known.update(zip(rec["ids"], (math.nan if s is None else float(s) for s in rec["scores"])))
    ids = list(rows["candidate_id"])
    todo_mask = [cid not in known for cid in ids]
    cached = len(ids) - sum(todo_mask)
    todo = rows[todo_mask]
    computed = 0
    try:
        if len(todo):
            from instructengine.progress import Progress

            scorer = scorer if scorer is not None else build_image_scorer(spec, run_dir)
            root = run_dir / "candidates"
            log(f"[scores] {spec.label}: {len(todo)} images to score, {cached} cached")
            with Progress(f"scores {spec.label}", len(todo), unit="image") as bar:
                for chunk in _chunks_by_instruction(todo, spec.batch_size):
                    images = [load_rgb(root / rel) for rel in chunk["image"]]
                    values = _score_column(scorer, spec, images, list(chunk["prompt"]))
                    chunk_ids = list(chunk["candidate_id"])
                    clean = [None if not np.isfinite(v) else float(v) for v in values]
                    ledger.add(f"chunk:{chunk_ids[0]}", ids=chunk_ids, scores=clean)
                    known.update(zip(chunk_ids, (math.nan if v is None else v for v in clean)))
                    computed += len(chunk_ids)
                    bar.update(len(chunk_ids))
    finally:
        ledger.close()
    return np.array([known[cid] for cid in ids], dtype=np.float64), {"cached": cached, "computed": computed}


def _chunks_by_instruction(rows: Any, batch_size: int):
    """Consecutive row blocks of about ``batch_size`` images that never split an instruction."""
    start = 0
    ids = list(rows["instruction_id"])
    n = len(ids)
    while start < n:
        end = min(n, start + batch_size)
        while end < n and ids[end] == ids[end - 1]:
            end += 1
        yield rows.iloc[start:end]
        start = end
