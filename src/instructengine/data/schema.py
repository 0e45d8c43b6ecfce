"""The preference-sample table: one row per kept sample (x1, y1, x2, y2, dimension, ...).

A dataset is a folder holding ``samples.parquet`` and the images it names. Image paths are
relative to that folder, so a dataset can be moved or copied whole. Under instruction x1 image
y1 is preferred to y2; under x2, y2 is preferred to y1 (the cross-validation structure).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DIMENSIONS = ("content", "counterfactual", "aesthetics")

#: column -> (pandas dtype kind, meaning)
SAMPLE_COLUMNS: dict[str, tuple[str, str]] = {
    "sample_id": ("O", "unique id of the sample (stable across re-runs)"),
    "theme": ("O", "primary theme of the taxonomy"),
    "subtopic": ("O", "subtopic of the theme"),
    "entity": ("O", "entity both instructions are about"),
    "dimension": ("O", f"contrast dimension, one of {DIMENSIONS}"),
    "instruction_1": ("O", "instruction x1 (prompt)"),
    "instruction_2": ("O", "instruction x2, contrasting with x1 along `dimension`"),
    "image_1": ("O", "path of y1 (best-of-N image for x1), relative to the dataset folder"),
    "image_2": ("O", "path of y2 (best-of-N image for x2), relative to the dataset folder"),
    "seed_1": ("i", "generation seed of y1"),
    "seed_2": ("i", "generation seed of y2"),
    "score_1": ("f", "selection score of y1 under x1"),
    "score_2": ("f", "selection score of y2 under x2"),
}


def validate_samples(df: pd.DataFrame, source: str = "samples") -> pd.DataFrame:
    """Check columns, types and dimension values; raise ValueError naming what is wrong."""
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; a sample table needs {list(SAMPLE_COLUMNS)}")
    for col, (kind, _) in SAMPLE_COLUMNS.items():
        if kind in "if" and len(df) and df[col].dtype.kind not in ("i", "u", "f"):
            raise ValueError(f"{source}: column {col!r} must be numeric, got dtype {df[col].dtype}")
    bad = sorted(set(df["dimension"]) - set(DIMENSIONS))
    if bad:
        raise ValueError(f"{source}: unknown dimension values {bad}; allowed: {list(DIMENSIONS)}")
    if df["sample_id"].duplicated().any():
        dup = df.loc[df["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"{source}: duplicate sample_id {dup!r}")
    return df


def load_samples(dataset_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """Read ``<dataset_dir>/samples.parquet``; return (validated table, dataset folder)."""
    root = Path(dataset_dir)
    path = root / "samples.parquet" if root.is_dir() else root
    if not path.is_file():
        raise FileNotFoundError(f"no sample table at {str(path)!r}; expected <dataset>/samples.parquet")
    df = pd.read_parquet(path)
    return validate_samples(df, str(path)), path.parent
