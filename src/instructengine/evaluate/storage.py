"""The on-disk contract of an evaluation (read by the report and by the human-review web app).

One folder per (model, benchmark)::

    <run_dir>/eval/<model_name>/<benchmark>/
        images/<prompt_index>_<seed>.png   the evaluation images
        generation.json                    model spec + generator description + seeds + settings hash
        prompts.parquet                    prompt_index (int), prompt (str), category (str)
        images.parquet                     prompt_index (int), seed (int), path (str, relative to the folder),
                                           nsfw_flagged (bool or null when the pipeline has no checker)
        scores.parquet                     prompt_index (int), seed (int), one float column per metric (NaN = not measured)
        summary.json                       per-metric mean/std/n/CI, Average, per-category means, scorer settings
        scorers.json                       scorer name -> options hash and the columns it wrote (for resume)
        manifest.json, config.yaml         counts, drops by reason, timings; the resolved run config
        images.progress.jsonl              resume ledger of generated images

``prompt_index`` is the prompt's position in the full benchmark, so (prompt_index, seed) names the
same prompt and initial noise in every model's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EvalFolder", "image_relpath", "json_safe", "model_dir", "read_eval_folder"]

IMAGES_DIR = "images"


def model_dir(run_dir: str | Path, model: str, benchmark: str) -> Path:
    return Path(run_dir) / "eval" / model / benchmark


def image_relpath(prompt_index: int, seed: int) -> str:
    return f"{IMAGES_DIR}/{int(prompt_index)}_{int(seed)}.png"


@dataclass
class EvalFolder:
    path: Path
    model: str
    benchmark: str
    prompts: Any  # DataFrame
    images: Any  # DataFrame
    scores: Any | None  # DataFrame
    generation: dict[str, Any]
    summary: dict[str, Any] | None


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by None (recursively), so the JSON files are standard JSON."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_eval_folder(path: str | Path) -> EvalFolder:
    """Read one eval/<model>/<benchmark>/ folder.

    Raises:
        FileNotFoundError: the folder or one of prompts.parquet / images.parquet / generation.json
            is missing (the message says which and how to produce it).
    """
    import pandas as pd

    p = Path(path)
    for name in ("prompts.parquet", "images.parquet", "generation.json"):
        if not (p / name).is_file():
            raise FileNotFoundError(f"{str(p)!r} has no {name}; run `instructengine eval` for this model and benchmark first")
    scores = pd.read_parquet(p / "scores.parquet") if (p / "scores.parquet").is_file() else None
    summary = json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else None
    return EvalFolder(
        path=p, model=p.parent.name, benchmark=p.name,
        prompts=pd.read_parquet(p / "prompts.parquet"), images=pd.read_parquet(p / "images.parquet"),
        scores=scores, generation=json.loads((p / "generation.json").read_text()), summary=summary,
    )
