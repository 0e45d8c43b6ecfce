"""ShapesBench: ShapesWorld's fixed evaluation prompt set (200 prompts in 6 categories).

Categories mirror DrawBench's intent: colours, counting, positions, counterfactual, aesthetics,
compositions. Every prompt is a held-out scene (:func:`instructengine.shapes.scene.scene_is_heldout`): it holds
a (count, size, colour, shape) group combination that no training caption holds, or its whole
attribute combination is one that no training caption states, so the benchmark measures prompts
the model and the data pipeline never saw. The set is generated
from a fixed seed and shipped as ``shapesbench.csv``; a test checks the file matches the generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from instructengine.shapes.scene import (
    BACKGROUNDS, COLOURS, PALETTES, RELATIONS, SHAPES, SIZES, MAX_COUNT_IN_RELATION, Group, Scene,
    scene_is_heldout,
)

BENCH_CSV = Path(__file__).parent / "shapesbench.csv"
XL_CSV = Path(__file__).parent / "shapesbench_xl.csv"
CATEGORIES = {  # category -> number of prompts
    "colours": 34, "counting": 34, "positions": 33, "counterfactual": 33, "aesthetics": 33, "compositions": 33,
}


def _group(rng: np.random.Generator, max_count: int, min_count: int = 1, intact: bool = True,
           not_colour: str | None = None) -> Group:
    colours = [c for c in COLOURS if c != not_colour]
    return Group(int(rng.integers(min_count, max_count + 1)), SIZES[rng.integers(2)],
                 colours[rng.integers(len(colours))], SHAPES[rng.integers(3)], intact)


def _style(rng: np.random.Generator, p: float = 0.5) -> dict:
    return {"palette": PALETTES[rng.integers(2)] if rng.random() < p else None,
            "background": BACKGROUNDS[rng.integers(2)] if rng.random() < p else None}


def _draw(category: str, rng: np.random.Generator) -> Scene:
    """A random scene of the category (held-out or not: the caller keeps held-out ones)."""
    if category == "colours":
        return Scene((_group(rng, 4),), palette=PALETTES[rng.integers(2)] if rng.random() < 0.5 else None)
    if category == "counting":
        return Scene((_group(rng, 4, min_count=2),), palette=PALETTES[rng.integers(2)])
    if category == "counterfactual":
        return Scene((_group(rng, 4, intact=False),), **_style(rng))
    if category == "aesthetics":
        return Scene((_group(rng, 4),), palette=PALETTES[rng.integers(2)], background=BACKGROUNDS[rng.integers(2)])
    rel = RELATIONS[rng.integers(4)]
    if category == "positions":
        a = _group(rng, 1)
        return Scene((a, _group(rng, 1, not_colour=a.colour)), rel)
    a = _group(rng, MAX_COUNT_IN_RELATION, intact=bool(rng.random() < 0.7))
    b = _group(rng, MAX_COUNT_IN_RELATION, intact=bool(rng.random() < 0.7), not_colour=a.colour)
    return Scene((a, b), rel, **_style(rng))


def generate_shapesbench(seed: int = 2024) -> pd.DataFrame:
    """The benchmark table (prompt, category), unique prompts, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    rows = [{"prompt": p, "category": c} for c, n in CATEGORIES.items() for p in _draw_heldout(c, rng, n, seen)]
    return pd.DataFrame(rows)


def _draw_heldout(category: str, rng: np.random.Generator, n: int, seen: set[str],
                  max_draws: int | None = None) -> list[str]:
    """Up to ``n`` distinct held-out captions of ``category`` not in ``seen`` (added to it), from at
    most ``max_draws`` draws (None: until ``n`` are found)."""
    out: list[str] = []
    draws = 0
    while len(out) < n and (max_draws is None or draws < max_draws):
        draws += 1
        scene = _draw(category, rng)
        if scene.caption in seen or not scene_is_heldout(scene):
            continue
        seen.add(scene.caption)
        out.append(scene.caption)
    return out


def load_shapesbench() -> pd.DataFrame:
    """The shipped ShapesBench (prompt, category)."""
    return pd.read_csv(BENCH_CSV)


def load_shapesbench_xl() -> pd.DataFrame:
    """The shipped ShapesBench-XL (prompt, category): :func:`generate_shapesbench_xl`'s 750 prompts."""
    return pd.read_csv(XL_CSV)


def load_shapesbench_subset(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A seeded random subset of ``n`` ShapesBench prompts, stratified by category (about n/6 each;
    nested: the subset of 60 lies inside that of 100), in ShapesBench's order: registered as
    ``shapesbench-60``, a cheaper test set for CPU-bound paper experiments."""
    from instructengine.train.sources import nested_subset

    df = load_shapesbench()
    return df.iloc[nested_subset(list(df.category), n, seed)].reset_index(drop=True)


if __name__ == "__main__":  # regenerate the shipped files: python -m instructengine.shapes.bench
    generate_shapesbench().to_csv(BENCH_CSV, index=False)
    generate_shapesbench_xl().to_csv(XL_CSV, index=False)


#: per-category cap of ShapesBench-XL; categories with fewer held-out captions (colours, counting,
#: aesthetics) contribute all of theirs that the validation set does not hold
XL_PER_CATEGORY = 200
XL_DRAWS_PER_CATEGORY = 40_000


def generate_shapesbench_xl(seed: int = 2025, per_category: int = XL_PER_CATEGORY,
                            draws: int = XL_DRAWS_PER_CATEGORY) -> pd.DataFrame:
    """ShapesBench-XL: a larger held-out test set for powered ablations (docs/training.md,
    "Statistical power"): up to ``per_category`` distinct held-out captions per ShapesBench category,
    drawn with ShapesBench's category generators (``draws`` tries per category), minus every
    validation prompt (``shapesbench-val``: no setting is chosen on these). It contains the shipped
    ShapesBench prompts that the draw meets. Small categories are exhausted: the held-out side holds
    only ~100 'colours', ~53 'counting' and ~150 'aesthetics' captions, so the category mix is not
    ShapesBench's and its means are not comparable with ShapesBench's (differences between arms are).
    A category's label is the first generator that drew the caption (the single-group categories
    overlap: every 'counting' caption is also a 'colours' one, so 'counting' ends up empty).
    Deterministic from ``seed``; shipped as ``shapesbench_xl.csv`` (generating takes ~10-60 s).
    """
    validation = set(generate_shapesbench(7).prompt)
    rng = np.random.default_rng(seed)
    seen = set(validation)
    rows = [{"prompt": p, "category": c} for c in CATEGORIES
            for p in _draw_heldout(c, rng, per_category, seen, max_draws=draws)]
    return pd.DataFrame(rows)


def validation_prompts(out: str | Path, seed: int = 7) -> Path:
    """ShapesBench's generator with another seed, minus the test prompts: a validation CSV for
    hyper-parameter selection (registered as ``validation_prompts`` kind ``shapesbench-val``)."""
    from instructengine.runs import atomic_write_text

    test = set(load_shapesbench().prompt)
    df = generate_shapesbench(seed)
    df = df[~df.prompt.isin(test)].reset_index(drop=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    return out
