"""``report(cfg)``: the Table-1 comparison of several models, as markdown and self-contained HTML.

Contents, computed on the (prompt_index, seed) pairs that every shown model has scored:

* **Table 1**: one row per model, one column per metric plus "Average" (the plain mean of the
  paper's six metric means, raw cosines not x100), best value per column in bold;
* the same with 95% bootstrap intervals (prompts resampled, see :mod:`.stats`);
* **relative change vs the base model** per metric and Average (the paper's "+10.53%"), with a
  paired bootstrap interval of the difference; a change whose interval excludes 0 is marked;
* **per-category** tables (DrawBench's 11 categories, ...) for Average and each metric;
* the VLM judge's win/tie/loss against the base, when ``judge/`` results exist;
* bar charts (matplotlib PNG) and an image grid of the same prompts and seeds side by side.

Outputs in ``report.output_dir`` (default ``<run_dir>/report/<benchmark>/``): ``report.md`` (links
the PNGs beside it), ``report.html`` (everything inlined as base64, one file to send around),
``report.json`` (all numbers), ``charts/*.png``, ``grid.png``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from instructengine.evaluate.config import PAPER_METRICS, EvalConfig
from instructengine.evaluate.stats import Interval, bootstrap_mean, per_prompt_means, relative_change
from instructengine.evaluate.storage import EvalFolder, json_safe, model_dir, read_eval_folder
from instructengine.runs import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["ReportData", "build_report_data", "report"]

AVERAGE = "Average"
LABELS = {"pickscore": "PickScore", "imagereward": "ImageReward", "hpsv2": "HPSv2", "clip": "CLIP",
          "blip": "BLIP", "aesthetic": "Aesthetic", "ict": "ICT", "hp": "HP", "ict_hp": "ICT×HP", "vqa": "VQA", AVERAGE: AVERAGE}


def _label(metric: str) -> str:
    return LABELS.get(metric, metric)


@dataclass
class ReportData:
    """Every number the report shows (also written to report.json)."""

    benchmark: str
    models: list[str]
    base: str
    metrics: list[str]  # shown metric columns, plus AVERAGE at the end when available
    n_prompts: int
    n_images: int
    means: dict[str, dict[str, float]]  # model -> metric -> mean
    intervals: dict[str, dict[str, Interval]]  # model -> metric -> bootstrap CI
    relative: dict[str, dict[str, float]]  # model -> metric -> % change vs base
    diff_intervals: dict[str, dict[str, Interval]]  # model -> metric -> paired CI of (model - base)
    categories: dict[str, dict[str, dict[str, float]]]  # metric -> category -> model -> mean
    average_of: list[str]
    confidence: float = 0.95
    judge: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def iv(i: Interval) -> dict[str, float]:
            return {"mean": i.mean, "low": i.low, "high": i.high, "n_prompts": i.n_prompts}

        return {
            "benchmark": self.benchmark, "models": self.models, "base": self.base, "metrics": self.metrics,
            "average_of": self.average_of, "confidence": self.confidence, "n_prompts": self.n_prompts, "n_images": self.n_images,
            "means": self.means,
            "intervals": {m: {k: iv(v) for k, v in d.items()} for m, d in self.intervals.items()},
            "relative_change_pct": self.relative,
            "difference_intervals": {m: {k: iv(v) for k, v in d.items()} for m, d in self.diff_intervals.items()},
            "categories": self.categories, "judge": self.judge, "notes": self.notes,
        }


def _common_table(folders: dict[str, EvalFolder], notes: list[str]):
    """Scores of every model restricted to the (prompt_index, seed) pairs all of them have."""
    import pandas as pd

    ref_name, ref = next(iter(folders.items()))
    ref_prompts = dict(zip(ref.prompts["prompt_index"], ref.prompts["prompt"]))
    common: set[tuple[int, int]] | None = None
    for name, f in folders.items():
        if f.scores is None:
            raise FileNotFoundError(f"{str(f.path)!r} has no scores.parquet; run `instructengine eval` to score it")
        prompts = dict(zip(f.prompts["prompt_index"], f.prompts["prompt"]))
        clash = [i for i in set(prompts) & set(ref_prompts) if prompts[i] != ref_prompts[i]]
        if clash:
            raise ValueError(
                f"models {ref_name!r} and {name!r} have different prompts at prompt_index {sorted(clash)[:5]}; "
                "they were not evaluated on the same prompt set"
            )
        keys = set(zip(f.scores["prompt_index"].astype(int), f.scores["seed"].astype(int)))
        common = keys if common is None else common & keys
    assert common is not None
    for name, f in folders.items():
        extra = len(f.scores) - len(common)
        if extra:
            notes.append(f"{name}: {extra} scored images have no counterpart in every model and are left out")
    if not common:
        raise ValueError("the models share no (prompt_index, seed) pair; evaluate them with the same prompts and seeds")
    order = sorted(common)
    idx = pd.MultiIndex.from_tuples(order, names=["prompt_index", "seed"])
    tables = {n: f.scores.assign(prompt_index=f.scores["prompt_index"].astype(int), seed=f.scores["seed"].astype(int))
              .set_index(["prompt_index", "seed"]).reindex(idx) for n, f in folders.items()}
    return tables, order


def _ordered_metrics(tables: dict[str, Any], wanted: list[str] | None) -> list[str]:
    present = [c for c in next(iter(tables.values())).columns if all(c in t.columns for t in tables.values())]
    if wanted is not None:
        missing = [m for m in wanted if m not in present]
        if missing:
            raise ValueError(f"report.metrics {missing} are not scored for every model; scored: {present}")
        return list(wanted)
    return [m for m in PAPER_METRICS if m in present] + [m for m in present if m not in PAPER_METRICS]


def build_report_data(folders: dict[str, EvalFolder], base: str, cfg: EvalConfig) -> ReportData:
    """Compute every table of the report from the models' eval folders (pure; no files written)."""
    r = cfg.report
    notes: list[str] = []
    tables, keys = _common_table(folders, notes)
    models = list(folders)
    metrics = _ordered_metrics(tables, r.metrics)
    average_of = [m for m in r.average_metrics if m in metrics] if all(m in metrics for m in r.average_metrics) else []
    if r.average_metrics and not average_of:
        notes.append(f"no {AVERAGE}: it needs all of {r.average_metrics}")
    pids = np.array([k[0] for k in keys])
    cat_of: dict[int, str] = {}
    for f in folders.values():
        cat_of.update(zip(f.prompts["prompt_index"].astype(int), f.prompts["category"].astype(str)))

    # per-prompt means: model -> metric -> (ids, values)
    per_prompt: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    means: dict[str, dict[str, float]] = {}
    for m in models:
        per_prompt[m] = {}
        means[m] = {}
        for c in metrics:
            v = tables[m][c].to_numpy(dtype=np.float64)
            per_prompt[m][c] = per_prompt_means(pids, v)
            means[m][c] = float(np.nanmean(v)) if (~np.isnan(v)).any() else float("nan")
        if average_of:
            means[m][AVERAGE] = float(np.mean([means[m][c] for c in average_of]))
            per_prompt[m][AVERAGE] = _average_per_prompt([per_prompt[m][c] for c in average_of])
    shown = metrics + ([AVERAGE] if average_of else [])

    boot = dict(samples=r.bootstrap_samples, confidence=r.confidence, seed=r.bootstrap_seed)
    intervals = {m: {c: bootstrap_mean(per_prompt[m][c][1], **boot) for c in shown if per_prompt[m][c][1].size} for m in models}
    relative: dict[str, dict[str, float]] = {}
    diffs: dict[str, dict[str, Interval]] = {}
    for m in models:
        relative[m] = {c: relative_change(means[m][c], means[base][c]) for c in shown}
        if m == base:
            continue
        diffs[m] = {}
        for c in shown:
            ids_m, v_m = per_prompt[m][c]
            ids_b, v_b = per_prompt[base][c]
            both, im, ib = np.intersect1d(ids_m, ids_b, return_indices=True)
            if both.size:
                diffs[m][c] = bootstrap_mean(v_m[im] - v_b[ib], **boot)

    categories: dict[str, dict[str, dict[str, float]]] = {}
    for c in shown:
        categories[c] = {}
        for m in models:
            ids, v = per_prompt[m][c]
            for cat in dict.fromkeys(cat_of[int(i)] for i in pids):
                sel = np.array([cat_of[int(i)] == cat for i in ids], dtype=bool)
                categories[c].setdefault(cat, {})[m] = float(v[sel].mean()) if sel.any() else float("nan")
    return ReportData(
        benchmark=next(iter(folders.values())).benchmark, models=models, base=base, metrics=shown,
        n_prompts=len(set(pids.tolist())), n_images=len(keys), means=means, intervals=intervals,
        relative=relative, diff_intervals=diffs, categories=categories, average_of=average_of,
        confidence=r.confidence, notes=notes,
    )


def _average_per_prompt(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    ids = parts[0][0]
    for i, _ in parts[1:]:
        ids = np.intersect1d(ids, i)
    vals = []
    for i, v in parts:
        pos = {int(x): j for j, x in enumerate(i)}
        vals.append(np.array([v[pos[int(x)]] for x in ids]))
    return ids, np.mean(vals, axis=0) if vals else np.array([])


# --------------------------------------------------------------------------------------------- rendering helpers


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:+.2f}%"


def _best(data: ReportData, c: str) -> float:
    vals = [data.means[m][c] for m in data.models if not np.isnan(data.means[m][c])]
    return max(vals) if vals else float("nan")


def _table_rows(data: ReportData) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    header = ["Model"] + [_label(c) for c in data.metrics]
    rows = []
    for m in data.models:
        row = [(m + (" (base)" if m == data.base else ""), False)]
        for c in data.metrics:
            v = data.means[m][c]
            row.append((_fmt(v), len(data.models) > 1 and not np.isnan(v) and v == _best(data, c)))
        rows.append(row)
    return header, rows


def _ci_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["Model"] + [_label(c) for c in data.metrics]
    rows = []
    for m in data.models:
        row = [m]
        for c in data.metrics:
            i = data.intervals[m].get(c)
            row.append("–" if i is None else f"{_fmt(i.mean)} [{_fmt(i.low)}, {_fmt(i.high)}]")
        rows.append(row)
    return header, rows


def _relative_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["Model"] + [_label(c) for c in data.metrics]
    rows = []
    base_means = data.means[data.base]
    for m in data.models:
        if m == data.base:
            continue
        row = [m]
        for c in data.metrics:
            rel = data.relative[m][c]
            d = data.diff_intervals.get(m, {}).get(c)
            if d is None or base_means[c] == 0 or np.isnan(base_means[c]):
                row.append(_pct(rel))
                continue
            lo, hi = 100 * d.low / abs(base_means[c]), 100 * d.high / abs(base_means[c])
            star = " *" if d.excludes_zero() else ""
            row.append(f"{_pct(rel)} [{lo:+.2f}, {hi:+.2f}]{star}")
        rows.append(row)
    return header, rows


def _category_rows(data: ReportData, metric: str) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    header = ["Category"] + data.models
    rows = []
    for cat, per_model in data.categories[metric].items():
        vals = [per_model.get(m, float("nan")) for m in data.models]
        best = np.nanmax(vals) if not all(np.isnan(vals)) else float("nan")
        rows.append([(cat, False)] + [(_fmt(v), len(vals) > 1 and v == best) for v in vals])
    return header, rows


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, tuple):
            text, bold = x
            text = str(text).replace("|", "\\|")
            return f"**{text}**" if bold else text
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, tuple):
            text, bold = x
            return f"<td><b>{html.escape(str(text))}</b></td>" if bold else f"<td>{html.escape(str(text))}</td>"
        return f"<td>{html.escape(str(x))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(x) for x in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------------- charts + grid


def make_charts(data: ReportData) -> dict[str, bytes]:
    """Bar charts as PNG bytes: metrics (with CIs), relative change vs base, per-category Average."""
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()

    charts: dict[str, bytes] = {}
    n = len(data.metrics)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, c in zip(axes.flat, data.metrics):
        vals = [data.means[m][c] for m in data.models]
        err = [[0.0] * len(vals), [0.0] * len(vals)]
        for j, m in enumerate(data.models):
            i = data.intervals[m].get(c)
            if i is not None:
                err[0][j], err[1][j] = max(vals[j] - i.low, 0.0), max(i.high - vals[j], 0.0)
        ax.bar(range(len(vals)), vals, yerr=err, capsize=3, color=[colors[j % len(colors)] for j in range(len(vals))])
        finite = [(v - lo_e, v + hi_e) for v, lo_e, hi_e in zip(vals, *err) if np.isfinite(v)]
        if finite:  # zoom on the bars: metrics like Aesthetic (~5) differ in the second decimal
            lo, hi = min(f[0] for f in finite), max(f[1] for f in finite)
            pad = (hi - lo) * 0.25 or abs(hi) * 0.05 or 0.1
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(vals)), data.models, rotation=30, ha="right", fontsize=8)
        ax.set_title(_label(c), fontsize=10)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{data.benchmark}: means with {_conf_pct(data)}% bootstrap intervals", fontsize=11)
    fig.tight_layout()
    charts["metrics"] = figure_png(fig, bbox_inches="tight")

    others = [m for m in data.models if m != data.base]
    if others:
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * n * len(others) + 2), 3.2))
        width = 0.8 / len(others)
        for j, m in enumerate(others):
            vals = [data.relative[m][c] for c in data.metrics]
            ax.bar(np.arange(n) + j * width, vals, width, label=m, color=colors[(j + 1) % len(colors)])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(n) + width * (len(others) - 1) / 2, [_label(c) for c in data.metrics], fontsize=8)
        ax.set_ylabel(f"% change vs {data.base}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        charts["relative"] = figure_png(fig, bbox_inches="tight")

    metric = AVERAGE if AVERAGE in data.metrics else data.metrics[0]
    cats = list(data.categories[metric])
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(cats) * len(data.models) + 2), 3.4))
    width = 0.8 / len(data.models)
    for j, m in enumerate(data.models):
        ax.bar(np.arange(len(cats)) + j * width, [data.categories[metric][cat][m] for cat in cats], width,
               label=m, color=colors[j % len(colors)])
    allv = [v for cat in cats for v in data.categories[metric][cat].values() if not np.isnan(v)]
    if allv:
        pad = (max(allv) - min(allv)) * 0.2 or 0.1
        ax.set_ylim(min(allv) - pad, max(allv) + pad)
    ax.set_xticks(np.arange(len(cats)) + width * (len(data.models) - 1) / 2, cats, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"{_label(metric)} per category", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    charts["categories"] = figure_png(fig, bbox_inches="tight")
    return charts


def grid_items(folders: dict[str, EvalFolder], n_prompts: int, n_seeds: int) -> list[tuple[int, int, str, str]]:
    """(prompt_index, seed, prompt, category) rows for the grid: prompts spread round-robin over categories."""
    first = next(iter(folders.values()))
    have = None
    for f in folders.values():
        keys = set(zip(f.images["prompt_index"].astype(int), f.images["seed"].astype(int)))
        have = keys if have is None else have & keys
    by_cat: dict[str, list[tuple[int, str]]] = {}
    for pid, prompt, cat in zip(first.prompts["prompt_index"].astype(int), first.prompts["prompt"], first.prompts["category"]):
        by_cat.setdefault(str(cat), []).append((pid, prompt))
    chosen: list[tuple[int, str, str]] = []
    depth = 0
    while len(chosen) < n_prompts and any(depth < len(v) for v in by_cat.values()):
        for cat, items in by_cat.items():
            if depth < len(items) and len(chosen) < n_prompts:
                chosen.append((items[depth][0], items[depth][1], cat))
        depth += 1
    out = []
    for pid, prompt, cat in chosen:
        seeds = sorted(s for p, s in (have or set()) if p == pid)[:n_seeds]
        out += [(pid, s, prompt, cat) for s in seeds]
    return out


def _thumb(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.NEAREST if max(im.size) < size else Image.BICUBIC)
        if max(im.size) < size:  # tiny images (ShapesWorld 32x32): scale up without blurring
            scale = size // max(im.size)
            im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
        return im.copy()


def make_grid(folders: dict[str, EvalFolder], items: list[tuple[int, int, str, str]], size: int) -> bytes | None:
    """One PNG: a column per model, a row per (prompt, seed), the prompt written at the left."""
    from PIL import Image, ImageDraw

    if not items:
        return None
    models = list(folders)
    label_w, header_h, pad = 220, 24, 4
    W = label_w + len(models) * (size + pad) + pad
    H = header_h + len(items) * (size + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    for j, m in enumerate(models):
        draw.text((label_w + pad + j * (size + pad), 6), m[: size // 6], fill="black")
    paths = {m: dict(zip(zip(f.images["prompt_index"].astype(int), f.images["seed"].astype(int)), f.images["path"]))
             for m, f in folders.items()}
    for i, (pid, seed, prompt, cat) in enumerate(items):
        y = header_h + pad + i * (size + pad)
        words, lines, line = prompt.split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > 34:
                lines.append(line)
                line = w
            else:
                line = (line + " " + w).strip()
        lines.append(line)
        text = "\n".join([f"#{pid} seed {seed} [{cat}]"] + lines[: max(1, size // 14 - 1)])
        draw.multiline_text((pad, y), text, fill="black", spacing=2)
        for j, m in enumerate(models):
            im = _thumb(folders[m].path / paths[m][(pid, seed)], size)
            canvas.paste(im, (label_w + pad + j * (size + pad), y))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# --------------------------------------------------------------------------------------------- documents


def render_markdown(data: ReportData, title: str, chart_files: dict[str, str], grid_file: str | None,
                    grid: list[tuple[int, int, str, str]]) -> str:
    md = [f"# {title}", ""]
    md.append(f"Benchmark **{data.benchmark}**: {data.n_prompts} prompts, {data.n_images} images per model "
              f"(the same prompts and seeds for every model). Base model: **{data.base}**.")
    if data.average_of:
        md.append(f"{AVERAGE} = plain mean of {', '.join(_label(c) for c in data.average_of)}{_paper_note(data)}.")
    md += ["", "## Table 1", "", _md_table(*_table_rows(data)), "", "Best value per column in bold.", ""]
    md += [f"## Means with {_conf_pct(data)}% bootstrap intervals (prompts resampled)", "", _md_table(*_ci_rows(data)), ""]
    if len(data.models) > 1:
        md += [f"## Relative change vs {data.base}", "",
               _md_table(*_relative_rows(data)), "",
               "Bracket: paired bootstrap interval of the difference, as % of the base mean; * = the interval excludes 0.", ""]
    if data.judge:
        md += [f"## VLM judge ({_judge_protocol(data)})", "", _md_table(*_judge_rows(data)), ""]
    md += ["## Charts", ""]
    for name, f in chart_files.items():
        md += [f"![{name}]({f})", ""]
    md += ["## Per category", ""]
    for c in data.metrics:
        md += [f"### {_label(c)}", "", _md_table(*_category_rows(data, c)), ""]
    if grid_file:
        md += ["## Same prompts, same seeds", "", f"![grid]({grid_file})", ""]
        md += [f"- #{pid} seed {seed} [{cat}]: {prompt}" for pid, seed, prompt, cat in grid] + [""]
    if data.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in data.notes] + [""]
    return "\n".join(md)


def _paper_note(data: ReportData) -> str:
    return " (cosine metrics as raw cosines, as in the paper's Table 1)" if data.average_of == PAPER_METRICS else ""


def _conf_pct(data: ReportData) -> str:
    return f"{100 * data.confidence:g}"


def _judge_protocol(data: ReportData) -> str:
    """How the judge asked, from the summaries: ours (both image orders, ties) or AGFSync's (one order, forced choice)."""
    kinds = sorted({res.get("protocol", "instructengine") for res in data.judge.values()})
    text = {"instructengine": "both image orders, ties allowed", "agfsync": "AGFSync's protocol: one order, forced A/B choice"}
    return "; ".join(text.get(k, k) for k in kinds)


def _judge_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["Model vs base", "Question", "Win", "Tie", "Loss", "Pairs", "Unanswered"]
    rows = []
    for m, res in data.judge.items():
        for q, d in res.get("questions", {}).items():
            rate = [("–" if d.get(k) is None else f"{100 * d[k]:.1f}%") for k in ("win", "tie", "loss")]
            rows.append([m, q, *rate, str(d["pairs"]), str(d.get("unanswered", 0))])
    return header, rows


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.grid td{vertical-align:top;text-align:center}.grid td.p{text-align:left;max-width:260px;font-size:0.9em}
.note{color:#666;font-size:0.9em}details{margin:0.4em 0}"""


def render_html(data: ReportData, title: str, charts: dict[str, bytes], folders: dict[str, EvalFolder],
                grid: list[tuple[int, int, str, str]], thumb: int) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f"<p>Benchmark <b>{e(data.benchmark)}</b>: {data.n_prompts} prompts, {data.n_images} images per model "
             f"(same prompts and seeds for every model). Base model: <b>{e(data.base)}</b>.</p>"]
    if data.average_of:
        parts.append(f"<p class='note'>{AVERAGE} = plain mean of {e(', '.join(_label(c) for c in data.average_of))}{e(_paper_note(data))}.</p>")
    parts += ["<h2>Table 1</h2>", _html_table(*_table_rows(data)), "<p class='note'>Best value per column in bold.</p>",
              f"<h2>Means with {_conf_pct(data)}% bootstrap intervals</h2>", _html_table(*_ci_rows(data))]
    if len(data.models) > 1:
        parts += [f"<h2>Relative change vs {e(data.base)}</h2>", _html_table(*_relative_rows(data)),
                  "<p class='note'>Bracket: paired bootstrap interval of the difference, as % of the base mean; * = excludes 0.</p>"]
    if data.judge:
        parts += [f"<h2>VLM judge ({e(_judge_protocol(data))})</h2>", _html_table(*_judge_rows(data))]
    parts.append("<h2>Charts</h2>")
    parts += [f"<p><img alt='{e(k)}' src='{_b64(v)}'></p>" for k, v in charts.items()]
    parts.append("<h2>Per category</h2>")
    for c in data.metrics:
        parts.append(f"<details{' open' if c == data.metrics[-1] else ''}><summary>{e(_label(c))}</summary>"
                     f"{_html_table(*_category_rows(data, c))}</details>")
    if grid:
        parts.append("<h2>Same prompts, same seeds</h2><table class='grid'><thead><tr><th>Prompt</th>"
                     + "".join(f"<th>{e(m)}</th>" for m in folders) + "</tr></thead><tbody>")
        paths = {m: dict(zip(zip(f.images["prompt_index"].astype(int), f.images["seed"].astype(int)), f.images["path"]))
                 for m, f in folders.items()}
        for pid, seed, prompt, cat in grid:
            cells = []
            for m, f in folders.items():
                buf = io.BytesIO()
                _thumb(f.path / paths[m][(pid, seed)], thumb).save(buf, format="PNG")
                cells.append(f"<td><img src='{_b64(buf.getvalue())}'></td>")
            parts.append(f"<tr><td class='p'>#{pid} seed {seed} [{e(cat)}]<br>{e(prompt)}</td>{''.join(cells)}</tr>")
        parts.append("</tbody></table>")
    if data.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in data.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write report.md, report.html, report.json, charts and grid for the models of ``cfg``.

    Raises:
        FileNotFoundError: a model's eval folder or its scores are missing.
        ValueError: the models were not evaluated on the same prompts, or share no (prompt, seed).
    """
    r = cfg.report
    models = r.models or [m.name for m in cfg.models]
    base = r.base or models[0]
    bench = cfg.benchmark.name
    folders = {m: read_eval_folder(model_dir(cfg.run_dir, m, bench)) for m in models}
    data = build_report_data(folders, base, cfg)
    data.judge = _read_judge(Path(cfg.run_dir), bench, base, models)
    out = Path(r.output_dir) if r.output_dir else Path(cfg.run_dir) / "report" / bench
    title = r.title or f"{bench} evaluation"
    charts = make_charts(data)
    chart_files = {}
    for name, png in charts.items():
        atomic_write_bytes(out / "charts" / f"{name}.png", png)
        chart_files[name] = f"charts/{name}.png"
    items = grid_items(folders, r.grid_prompts, r.grid_seeds)
    grid_png = make_grid(folders, items, r.grid_image_size)
    if grid_png is not None:
        atomic_write_bytes(out / "grid.png", grid_png)
    atomic_write_text(out / "report.md", render_markdown(data, title, chart_files, "grid.png" if grid_png else None, items))
    atomic_write_text(out / "report.html", render_html(data, title, charts, folders, items, r.grid_image_size))
    atomic_write_json(out / "report.json", json_safe(data.to_json()))
    log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return {"markdown": out / "report.md", "html": out / "report.html", "json": out / "report.json"}


def _read_judge(run_dir: Path, bench: str, base: str, models: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for m in models:
        p = run_dir / "judge" / bench / f"{m}__vs__{base}" / "summary.json"
        if m != base and p.is_file():
            out[m] = json.loads(p.read_text())
    return out
