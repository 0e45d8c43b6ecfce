"""Stage 5a, select: the best of N candidates per instruction by an image-text scorer.

Reads ``candidates/candidates.parquet`` (and pairs.parquet, to account for instructions that have
no candidate at all); scores every usable candidate (not flagged by a safety checker) through the
shared score cache (:func:`instructengine.images.scorers.score_candidates`); writes into
``<run_dir>/select/``:

* ``selected.parquet`` - one row per instruction that has a best image (:data:`SELECTED_COLUMNS`);
* ``scores.parquet`` - every scored candidate's score (for analysis and the card);
* ``manifest.json`` - counts are instructions; drops: ``no_candidates`` (generation failed),
  ``all_nsfw`` (every candidate flagged), ``score_not_measured`` (the scorer gave NaN for all).

Ties go to the lowest candidate index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from instructengine.images.candidates import plan_instructions, read_candidates
from instructengine.images.config import DataPipelineConfig
from instructengine.images.scorers import score_candidates
from instructengine.runs import Manifest, StageDir, atomic_write_parquet

__all__ = ["SELECTED_COLUMNS", "STAGE", "generator_fingerprint", "read_selected", "run_select"]

STAGE = "select"

#: column -> meaning (selected.parquet)
SELECTED_COLUMNS = {
    "instruction_id": "<pair_id>_<side>",
    "pair_id": "pair of pairs.parquet",
    "side": "1 or 2",
    "prompt": "instruction text",
    "k": "index of the chosen candidate",
    "seed": "its generation seed",
    "image": "its PNG, relative to the candidates folder",
    "score": "its selection score",
    "n_scored": "candidates scored for this instruction",
    "score_margin": "best score minus the second best (NaN with one candidate)",
}


def generator_fingerprint(run_dir: str | Path) -> str:
    import json

    path = Path(run_dir) / "candidates" / "generator.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}; run the candidates stage first")
    return json.loads(path.read_text())["fingerprint"]


def run_select(cfg: DataPipelineConfig, scorer: Any = None, log: Callable[[str], None] = lambda s: None) -> Manifest:
    """Run (or resume) best-of-N selection; ``scorer`` defaults to ``cfg.select.scorer``'s."""
    import pandas as pd

    from instructengine.instructions.stage import read_pairs

    stage = StageDir(cfg.run_dir, STAGE)
    manifest = stage.new_manifest(cfg.select)
    instructions = plan_instructions(read_pairs(cfg.run_dir), cfg.candidates.max_pairs)
    cands = read_candidates(cfg.run_dir)
    manifest.inputs["candidates"] = str(Path(cfg.run_dir) / "candidates" / "candidates.parquet")
    usable = cands[~cands["nsfw"]].reset_index(drop=True)
    with manifest.timed("scoring"):
        scores, stats = score_candidates(
            cfg.run_dir, cfg.select.scorer, usable, generator_fingerprint(cfg.run_dir), scorer, log
        )
    usable = usable.assign(score=scores)
    by_instruction = {iid: g for iid, g in usable.groupby("instruction_id", sort=False)}
    with_any = set(cands["instruction_id"])
    rows = []
    for ins in instructions:
        manifest.count_in += 1
        group = by_instruction.get(ins.id)
        if group is None:
            manifest.drop("all_nsfw" if ins.id in with_any else "no_candidates")
            continue
        values = group["score"].to_numpy()
        finite = np.isfinite(values)
        if not finite.any():
            manifest.drop("score_not_measured")
            continue
        masked = np.where(finite, values, -np.inf)
        best = int(np.argmax(masked))
        ordered = np.sort(values[finite])[::-1]
        chosen = group.iloc[best]
        rows.append(
            {
                "instruction_id": ins.id,
                "pair_id": ins.pair_id,
                "side": ins.side,
                "prompt": ins.prompt,
                "k": int(chosen["k"]),
                "seed": int(chosen["seed"]),
                "image": chosen["image"],
                "score": float(values[best]),
                "n_scored": int(finite.sum()),
                "score_margin": float(ordered[0] - ordered[1]) if len(ordered) > 1 else float("nan"),
            }
        )
    table = pd.DataFrame(rows, columns=list(SELECTED_COLUMNS))
    table = table.astype({"side": "int64", "k": "int64", "seed": "int64", "score": "float64", "n_scored": "int64"})
    manifest.outputs["selected"] = str(atomic_write_parquet(stage.path("selected.parquet"), table))
    scored = usable[["candidate_id", "instruction_id", "k", "score"]]
    manifest.outputs["scores"] = str(atomic_write_parquet(stage.path("scores.parquet"), scored))
    manifest.count_out = len(table)
    finite_scores = scores[np.isfinite(scores)]
    manifest.extra.update(
        scorer=cfg.select.scorer.fingerprint(),
        scores_cached=stats["cached"],
        scores_computed=stats["computed"],
        candidates_scored=len(usable),
        candidates_nsfw=int(cands["nsfw"].sum()),
        score_mean_all=round(float(finite_scores.mean()), 6) if len(finite_scores) else None,
        score_mean_selected=round(float(table["score"].mean()), 6) if len(table) else None,
    )
    stage.write_manifest(manifest)
    return manifest


def read_selected(run_dir: str | Path) -> Any:
    import pandas as pd

    path = Path(run_dir) / STAGE / "selected.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no selection at {str(path)!r}; run the select stage first")
    return pd.read_parquet(path)
