"""The ShapesWorld report: metric table (with 95% intervals), per-category bar chart and an image
grid of the same prompts and seeds for every model, as markdown + PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from instructengine.runs import atomic_write_text
from instructengine.shapes.evaluate import SHAPES_METRICS, read_summary

TABLE_METRICS = SHAPES_METRICS + ("shapes_clip",)


def _fmt(entry: dict | None, pct: bool) -> str:
    if not entry:
        return "–"
    k = 100.0 if pct else 1.0
    lo, hi = entry["ci95"]
    return f"{entry['mean'] * k:.1f} [{lo * k:.1f}, {hi * k:.1f}]" if pct else f"{entry['mean']:.4f}"


def metric_table(folders: list[Path]) -> str:
    """Markdown table: one row per model, exact match and per-attribute accuracy (%, 95% CI)."""
    head = "| model | " + " | ".join(TABLE_METRICS) + " |"
    rows = [head, "|" + "---|" * (len(TABLE_METRICS) + 1)]
    for f in folders:
        s = read_summary(f)["overall"]
        rows.append(f"| {read_summary(f)['model']} | " +
                    " | ".join(_fmt(s.get(m), m != "shapes_clip") for m in TABLE_METRICS) + " |")
    return "\n".join(rows)


def category_table(folders: list[Path]) -> str:
    cats = sorted(read_summary(folders[0])["per_category"])
    rows = ["| model | " + " | ".join(cats) + " |", "|" + "---|" * (len(cats) + 1)]
    for f in folders:
        s = read_summary(f)
        rows.append(f"| {s['model']} | " + " | ".join(
            _fmt(s["per_category"][c].get("exact"), True) for c in cats) + " |")
    return "\n".join(rows)


def bar_chart(folders: list[Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(read_summary(folders[0])["per_category"])
    labels = ["overall"] + cats
    width = 0.8 / len(folders)
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2, 3.6))
    for i, f in enumerate(folders):
        s = read_summary(f)
        entries = [s["overall"]["exact"]] + [s["per_category"][c]["exact"] for c in cats]
        means = np.array([e["mean"] for e in entries]) * 100
        err = np.array([[e["mean"] - e["ci95"][0], e["ci95"][1] - e["mean"]] for e in entries]).T * 100
        ax.bar(np.arange(len(labels)) + i * width, means, width, yerr=err, capsize=2, label=s["model"])
    ax.set_xticks(np.arange(len(labels)) + width * (len(folders) - 1) / 2, labels, rotation=20)
    ax.set_ylabel("oracle exact match (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("ShapesBench exact match (95% bootstrap CI over prompts)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(folders: list[Path], path: Path, per_category: int = 2, scale: int = 3) -> Path:
    """Rows: a few prompts per category; columns: each model x each seed; green/red frame = oracle
    exact match yes/no. The prompts are listed, numbered, in the markdown beside the grid."""
    from PIL import Image, ImageDraw

    prompts = pd.read_parquet(folders[0] / "prompts.parquet")
    chosen = prompts.groupby("category", sort=True).head(per_category)
    seeds = sorted(pd.read_parquet(folders[0] / "images.parquet").seed.unique())
    cell, pad = 32 * scale + 6, 4
    cols = len(folders) * len(seeds)
    grid = Image.new("RGB", (cols * cell + (len(folders) - 1) * pad * 3, len(chosen) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for fi, f in enumerate(folders):
        scores = pd.read_parquet(f / "scores.parquet").set_index(["prompt_index", "seed"])
        for r, pi in enumerate(chosen.prompt_index):
            for si, seed in enumerate(seeds):
                im = Image.open(f / f"images/{pi}_{seed}.png").convert("RGB").resize((32 * scale,) * 2, Image.NEAREST)
                x = (fi * len(seeds) + si) * cell + fi * pad * 3
                ok = bool(scores.loc[(pi, seed), "exact"])
                draw.rectangle([x, r * cell, x + cell - 1, (r + 1) * cell - 1], fill=(40, 170, 60) if ok else (210, 50, 50))
                grid.paste(im, (x + 3, r * cell + 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path, chosen


def write_report(folders: list[Path], out_dir: str | Path, title: str = "ShapesWorld report",
                 notes: list[str] | None = None) -> Path:
    """Write ``report.md`` (+ PNGs) comparing the given evaluation folders; returns its path."""
    out = Path(out_dir)
    folders = [Path(f) for f in folders]
    chart = bar_chart(folders, out / "exact_by_category.png")
    grid, chosen = image_grid(folders, out / "grid.png")
    models = [read_summary(f)["model"] for f in folders]
    seeds = sorted(pd.read_parquet(folders[0] / "images.parquet").seed.unique())
    s0 = read_summary(folders[0])
    lines = [
        f"# {title}", "",
        f"Benchmark: **{s0['benchmark']}**, {s0['images']} images per model "
        f"({len(seeds)} seeds per prompt, the same seeds for every model). Accuracy in %, "
        "with 95% bootstrap intervals over prompts; `–` = no prompt states that attribute.", "",
        "## Oracle exact match and per-attribute accuracy", "", metric_table(folders), "",
        "## Exact match per category", "", category_table(folders), "",
        f"![exact match by category]({chart.name})", "",
        "## Image grid", "",
        f"Columns: {', '.join(f'{m} (seeds {list(map(int, seeds))})' for m in models)}; "
        "green frame = the oracle accepts the image, red = it does not.", "",
        f"![grid]({grid.name})", "",
    ]
    lines += [f"{i + 1}. `{p}` ({c})" for i, (p, c) in enumerate(zip(chosen.prompt, chosen.category))]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
