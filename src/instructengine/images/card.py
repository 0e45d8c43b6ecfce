"""The dataset card: README.md with the funnel, drops by reason, and histograms as PNG.

The card is a Hugging Face dataset card: its YAML front matter (``huggingface_hub.DatasetCardData``)
declares ``configs`` (the ``default`` config, split ``train`` = ``samples.parquet``), the
``dataset_info.features`` of :data:`~instructengine.data.schema.SAMPLE_COLUMNS`, license, task
categories, tags and the funnel counts (``instructengine_funnel``), so
``datasets.load_dataset(<folder>, split="train")`` loads the samples (not the PNGs of the folder)
and the folder can be pushed with ``push_to_hub`` / ``upload_folder`` as it is. ``image_1`` /
``image_2`` stay paths relative to the folder (strings, not ``Image`` features: the images are
hard links to the candidates, embedding them would copy ~416K PNGs at paper scale, and
``datasets`` resolves a relative image path against the working directory, not the folder). No
machine path is written: local model folders appear by name only.

The funnel is read from the stages' manifest.json files in the run folder (a stage that did not
run, e.g. when pairs.parquet came from elsewhere, is shown as absent), so the card states what
the pipeline actually did: subtopics -> entities -> pairs -> instructions -> candidate images ->
selected images -> images kept by the judge -> kept samples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["funnel", "write_card"]


def _manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def funnel(run_dir: str | Path, dataset_folder: str) -> list[dict[str, Any]]:
    """One row per pipeline step: step, unit, in, out, dropped-by-reason (None where absent)."""
    run_dir = Path(run_dir)
    steps = [
        ("taxonomy", "taxonomy", "subtopics"),
        ("entities", "entities", "entities"),
        ("instruction pairs", "instructions", "pairs"),
        ("candidates", "candidates", "images"),
        ("best-of-N selection", "select", "instructions"),
        ("judge", "judge", "images"),
        ("kept samples", dataset_folder, "pairs"),
    ]
    rows = []
    for name, stage, unit in steps:
        m = _manifest(run_dir, stage)
        if m is None:
            rows.append({"step": name, "stage": stage, "unit": unit, "in": None, "out": None, "dropped": {}})
            continue
        counts = m["counts"]
        rows.append({"step": name, "stage": stage, "unit": unit, "in": counts["in"], "out": counts["out"],
                     "dropped": counts["dropped"], "extra": m.get("extra", {})})
    return rows


def _histogram(counts: Any, title: str, path: Path) -> None:
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()
    labels = [str(k) for k in counts.index]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(labels) + 2), 3.2), dpi=100)
    ax.bar(range(len(labels)), counts.to_numpy(), color="#4C72B0")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylabel("kept samples")
    ax.set_title(title)
    for i, v in enumerate(counts.to_numpy()):
        ax.text(i, v, str(int(v)), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    figure_png(fig, path, dpi=100, metadata={"Software": None})


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def public_ref(ref: str | None) -> str:
    """A model reference as the card shows it: a Hub id as it is, a local folder by its name."""
    if not ref:
        return ""
    p = Path(ref).expanduser()
    return p.name if (p.is_absolute() or p.exists() or ref.startswith(".")) else ref


_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?:~|[A-Za-z]:)?/(?:[\w.@+-]+/)*([\w.@+-]+)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path (``/a/b/c``, ``~/x``, ``C:/x``) replaced by its last part."""
    return _ABSOLUTE.sub(lambda m: m.group(1), text)


_DTYPES = {"O": "string", "i": "int64", "f": "float64", "b": "bool"}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def card_data(cfg: Any, samples: Any, rows: list[dict[str, Any]]) -> Any:
    """The front matter: what ``datasets.load_dataset`` and the Hub read."""
    from huggingface_hub import DatasetCardData

    from instructengine.data.schema import SAMPLE_COLUMNS

    funnel_counts = [
        {"step": r["step"], "unit": r["unit"], "in": r["in"], "out": r["out"],
         "dropped": int(sum(r["dropped"].values())) if r["in"] is not None else None}
        for r in rows
    ]
    return DatasetCardData(
        pretty_name=cfg.dataset.pretty_name,
        license=cfg.dataset.license,
        task_categories=["text-to-image"],
        tags=list(dict.fromkeys(["instructengine", "preference", "dpo", "text-to-image", *cfg.dataset.tags])),
        size_categories=[_size_category(len(samples))],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "samples.parquet"}]}],
        dataset_info={
            "features": [{"name": c, "dtype": _DTYPES[kind]} for c, (kind, _) in SAMPLE_COLUMNS.items()],
            "splits": [{"name": "train", "num_examples": int(len(samples))}],
        },
        instructengine_funnel=funnel_counts,
    )


def write_card(cfg: Any, samples: Any, folder: Path) -> Path:
    """Write README.md (and the histograms when ``cfg.dataset.histograms``) into ``folder``."""
    from instructengine.data.schema import SAMPLE_COLUMNS
    from instructengine.runs import atomic_write_text

    run_dir = Path(cfg.run_dir)
    rows = funnel(run_dir, cfg.dataset.folder)
    lines = [
        "# InstructEngine preference dataset",
        "",
        "Cross-validation preference samples (x1, y1, x2, y2): under instruction x1 image y1 is preferred to y2, "
        "under x2 image y2 is preferred to y1. Built by the InstructEngine data pipeline "
        "(taxonomy -> entities -> contrasting instruction pairs -> N candidates -> best-of-N -> judge).",
        "",
        f"- samples: **{len(samples):,}** in `samples.parquet` (image paths relative to this folder)",
        f"- generator: `{cfg.generator.kind}` {public_ref(cfg.generator.model)} - {cfg.candidates.n_candidates} candidates per instruction, "
        + _generator_settings(cfg.generator),
        f"- selection scorer: `{cfg.select.scorer.label}`; judge: `{cfg.judge.kind}`"
        + (f" ({cfg.judge_llm().model})" if cfg.judge.kind == "vlm" else ""),
        *(
            [f"- the image stages used {cfg.candidates.max_pairs:,} of the pairs (`candidates.max_pairs`)"]
            if cfg.candidates.max_pairs is not None
            else []
        ),
        "",
        "## Funnel",
        "",
        "| step | unit | in | out | dropped |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        dropped = sum(r["dropped"].values()) if r["in"] is not None else None
        lines.append(f"| {r['step']} | {r['unit']} | {_fmt(r['in'])} | {_fmt(r['out'])} | {_fmt(dropped)} |")
    lines += ["", "Stages shown with `-` did not run in this run folder.", "", "## Drops by reason", ""]
    for r in rows:
        if r["dropped"]:
            reasons = ", ".join(f"`{k}` {v:,}" for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1]))
            lines.append(f"- **{r['step']}** ({r['unit']}): {reasons}")
    if not any(r["dropped"] for r in rows):
        lines.append("- none")
    lines += ["", "## Kept samples per dimension and theme", ""]
    per_dim = samples["dimension"].value_counts().sort_index()
    per_theme = samples["theme"].value_counts().sort_index()
    lines += ["| dimension | samples |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in per_dim.items()]
    lines += ["", "| theme | samples |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in per_theme.items()]
    if cfg.dataset.histograms and len(samples):
        _histogram(per_dim, "kept samples per dimension", folder / "hist_dimension.png")
        _histogram(per_theme, "kept samples per theme", folder / "hist_theme.png")
        lines += ["", "![per dimension](hist_dimension.png)", "", "![per theme](hist_theme.png)"]
    lines += ["", "## Columns", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {meaning} |" for c, (_, meaning) in SAMPLE_COLUMNS.items()]
    lines += [
        "",
        "`sample_id` is the pair's `pair_id` in the run's `instructions/pairs.parquet`; its two instructions are "
        "`<sample_id>_1` and `<sample_id>_2` in the candidates, select and judge tables.",
        "",
        "## Load",
        "",
        "```python",
        "import datasets",
        "samples = datasets.load_dataset(\"<this folder or its Hub id>\", split=\"train\")  # image_1/image_2: paths in this folder",
        "from instructengine.data.schema import load_samples",
        "df, root = load_samples(\"<this folder>\")  # pandas, validated; what the trainer reads (data.path)",
        "```",
        "",
    ]
    from huggingface_hub import DatasetCard

    body = scrub_paths("\n".join(lines))
    card = DatasetCard(f"---\n{card_data(cfg, samples, rows).to_yaml()}\n---\n\n" + body)
    return atomic_write_text(folder / "README.md", str(card))


def _generator_settings(gen) -> str:
    """The settings that determine a generator's images, in words."""
    return gen.settings_text()
