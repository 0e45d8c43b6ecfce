"""Stage 6, dataset: the preference-sample table, its images and a dataset card.

A pair (x1, x2) of pairs.parquet becomes a sample when both of its instructions have a selected
image and the judge kept both. Writes into the dataset folder ``<run_dir>/<dataset.folder>``
(default ``<run_dir>/images``, the trainer's ``data.path``):

* ``samples.parquet`` - exactly the columns of :data:`instructengine.data.schema.SAMPLE_COLUMNS`
  (validated with ``validate_samples``); ``sample_id`` is the pair id of pairs.parquet (so a sample
  joins back to its pair, entity and the ``<sample_id>_1`` / ``_2`` rows of the candidates, select
  and judge tables); image paths are relative to the dataset folder;
* ``images/..`` - the kept images (hard links to the candidates by default: no copy at scale);
* ``README.md`` + ``hist_theme.png`` + ``hist_dimension.png`` - the dataset card (:mod:`.card`);
* ``manifest.json`` - counts are pairs; drops: ``not_selected:<x1|x2|both>`` (an instruction has no
  selected image), ``judge_error:<x1|x2|both>`` (the judge could not answer), and
  ``rejected:<x1|x2|both>`` (the judge rejected the image(s)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from instructengine.images.config import DataPipelineConfig
from instructengine.images.files import instruction_id, link_or_copy
from instructengine.runs import Manifest, StageDir, atomic_write_parquet
from instructengine.errors import UsageError

__all__ = ["EmptyDatasetError", "load_dataset", "run_dataset"]


class EmptyDatasetError(UsageError, RuntimeError):
    """The dataset stage would write no sample; the message names the stage that lost them and why."""


def _empty_cause(manifest: Manifest, judged: Any) -> str:
    drops = ", ".join(f"{r}: {n}" for r, n in manifest.dropped.most_common(3)) or "no pairs"
    reasons = judged["reason"].value_counts() if len(judged) else None
    judge = ""
    if reasons is not None and "ok" not in reasons.index:
        top = ", ".join(f"{r}: {n}" for r, n in reasons.head(3).items())
        judge = f"; stage 'judge' kept none of its {len(judged)} images ({top})"
        if any(str(r).startswith("judge_error:unavailable:") for r in reasons.index):
            judge += " - the VLM server was unavailable; run again once it is back (those images are judged again)"
    return (
        f"stage 'dataset' has no sample (in {manifest.count_in} pairs; dropped {drops}){judge}. "
        f"samples.parquet was not written; the manifest is in {manifest.stage}/manifest.json"
    )


def _which(bad1: bool, bad2: bool) -> str:
    return "both" if bad1 and bad2 else ("x1" if bad1 else "x2")


def run_dataset(cfg: DataPipelineConfig, log: Callable[[str], None] = lambda s: None) -> Manifest:
    """Assemble (or re-assemble) the dataset folder from the select and judge stages' tables.

    Raises:
        FileNotFoundError: an earlier stage's table is missing.
        RuntimeError: a selected image has no verdict (the judge stage did not finish).
        EmptyDatasetError: no pair became a sample (its manifest is written, samples.parquet not).
    """
    import pandas as pd

    from instructengine.data.schema import SAMPLE_COLUMNS, validate_samples
    from instructengine.images.candidates import limit_pairs, plan_instructions
    from instructengine.images.card import write_card
    from instructengine.images.judge import read_judged
    from instructengine.images.select import read_selected
    from instructengine.instructions.stage import read_pairs

    run_dir = Path(cfg.run_dir)
    stage = StageDir(run_dir, cfg.dataset.folder)
    manifest = stage.new_manifest(cfg.dataset)
    pairs = limit_pairs(read_pairs(run_dir), cfg.candidates.max_pairs)
    plan_instructions(pairs)  # checks pair ids are unique
    selected = read_selected(run_dir).set_index("instruction_id")
    judged = read_judged(run_dir).set_index("instruction_id")
    manifest.inputs.update(
        pairs=str(run_dir / "instructions" / "pairs.parquet"),
        selected=str(run_dir / "select" / "selected.parquet"),
        judged=str(run_dir / "judge" / "judged.parquet"),
    )
    candidates_root = run_dir / "candidates"
    rows = []
    for p in pairs.itertuples(index=False):
        manifest.count_in += 1
        ids = (instruction_id(p.pair_id, 1), instruction_id(p.pair_id, 2))
        missing = [i not in selected.index for i in ids]
        if any(missing):
            manifest.drop(f"not_selected:{_which(*missing)}")
            continue
        unjudged = [i for i in ids if i not in judged.index]
        if unjudged:
            raise RuntimeError(f"selected image of {unjudged[0]} has no verdict; run the judge stage (it resumes)")
        v1, v2 = judged.loc[ids[0]], judged.loc[ids[1]]
        errors = [str(v.reason).startswith("judge_error") for v in (v1, v2)]
        if any(errors):
            manifest.drop(f"judge_error:{_which(*errors)}")
            continue
        rejected = [not bool(v.keep) for v in (v1, v2)]
        if any(rejected):
            manifest.drop(f"rejected:{_which(*rejected)}")
            continue
        s1, s2 = selected.loc[ids[0]], selected.loc[ids[1]]
        for s in (s1, s2):
            link_or_copy(candidates_root / s["image"], stage.path(s["image"]), cfg.dataset.link)
        rows.append(
            {
                "sample_id": p.pair_id,
                "theme": p.theme,
                "subtopic": p.subtopic,
                "entity": p.entity,
                "dimension": p.dimension,
                "instruction_1": p.instruction_1,
                "instruction_2": p.instruction_2,
                "image_1": s1["image"],
                "image_2": s2["image"],
                "seed_1": int(s1["seed"]),
                "seed_2": int(s2["seed"]),
                "score_1": float(s1["score"]),
                "score_2": float(s2["score"]),
            }
        )
    columns = list(SAMPLE_COLUMNS)
    table = pd.DataFrame(rows, columns=columns).astype(
        {"seed_1": "int64", "seed_2": "int64", "score_1": "float64", "score_2": "float64"}
    )
    if table.empty:
        stage.write_manifest(manifest)
        raise EmptyDatasetError(_empty_cause(manifest, judged))
    validate_samples(table, str(stage.path("samples.parquet")))
    removed = _prune(stage.root / "images", {r["image_1"] for r in rows} | {r["image_2"] for r in rows}, stage.root)
    manifest.outputs["samples"] = str(atomic_write_parquet(stage.path("samples.parquet"), table))
    manifest.count_out = len(table)
    manifest.extra.update(
        images=2 * len(table),
        images_removed_as_stale=removed,
        per_dimension={k: int(v) for k, v in table["dimension"].value_counts().sort_index().items()},
        per_theme={k: int(v) for k, v in table["theme"].value_counts().sort_index().items()},
        link=cfg.dataset.link,
    )
    stage.write_manifest(manifest)
    card = write_card(cfg, table, stage.root)
    log(f"[dataset] {len(table)} samples -> {stage.path('samples.parquet')} (card {card})")
    return manifest


def _prune(images_dir: Path, keep: set[str], root: Path) -> int:
    """Remove dataset images no sample names (left by an earlier assembly with other verdicts)."""
    if not images_dir.is_dir():
        return 0
    removed = 0
    for path in images_dir.rglob("*.png"):
        if path.relative_to(root).as_posix() not in keep:
            path.unlink()
            removed += 1
    return removed


def load_dataset(path: str | Path) -> tuple[Any, Path]:
    """The validated sample table and its folder (``instructengine.data.schema.load_samples``)."""
    from instructengine.data.schema import load_samples

    return load_samples(path)
