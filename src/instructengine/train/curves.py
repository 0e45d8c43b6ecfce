"""Training curves: a run's ``metrics.jsonl`` -> loss and implicit accuracy per step, one PNG.

``metrics.jsonl`` (written by the trainer) has one JSON object per logged optimizer step with
``step``, ``loss`` and, for the DPO-family methods, ``implicit_acc_<triple>`` (``x1``/``x2`` for
cross-validation DPO, ``y1``/``y2`` too for the four-triple form, ``pair`` for triples). The
*implicit accuracy* of a step is the mean of its ``implicit_acc_*`` values (the share of triples
whose policy-vs-reference margin has the right sign). ReFL runs have no implicit accuracy; ask
for ``reward`` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["IMPLICIT_ACC", "curve_series", "plot_training_curves", "read_metrics"]

#: derived metric: mean of a step's implicit_acc_* values
IMPLICIT_ACC = "implicit_acc"


def _metrics_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {str(p)!r}; give a run's metrics.jsonl or its train/<name> folder")
    return p


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (or of ``<folder>/metrics.jsonl``), sorted by step; a repeated step
    keeps its last row (a resumed run rewrote it).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object with an integer ``step`` (its line number is named).
    """
    p = _metrics_file(path)
    rows: dict[int, dict] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{p}:{n}: expected a JSON object with an integer 'step'")
        rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def _value(row: dict, metric: str) -> float:
    if metric == IMPLICIT_ACC:
        vals = [float(v) for k, v in row.items() if k.startswith("implicit_acc_") and v is not None]
        return float(np.mean(vals)) if vals else float("nan")
    v = row.get(metric)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def curve_series(rows: Sequence[dict], metric: str, smooth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric; ``smooth`` > 1 is a trailing moving average over that many logged
    steps (the first points average what there is). Steps without the metric are left out.

    Raises:
        ValueError: ``smooth`` < 1.
    """
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1 logged steps, got {smooth}")
    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    vals = np.array([_value(r, metric) for r in rows], dtype=np.float64)
    keep = np.isfinite(vals)
    steps, vals = steps[keep], vals[keep]
    if smooth > 1 and len(vals):
        c = np.cumsum(np.insert(vals, 0, 0.0))
        idx = np.arange(1, len(vals) + 1)
        lo = np.maximum(0, idx - smooth)
        vals = (c[idx] - c[lo]) / (idx - lo)
    return steps, vals


def plot_training_curves(
    runs: Mapping[str, str | Path] | Sequence[str | Path],
    out: str | Path,
    metrics: Sequence[str] = ("loss", IMPLICIT_ACC),
    smooth: int = 1,
    title: str | None = None,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Plot ``metrics`` per step for one or several arms, one panel per metric, into the PNG ``out``.

    ``runs`` maps an arm's label to its ``metrics.jsonl`` (or train folder); a plain list is labelled
    by folder name. Returns ``{metric: {arm: (steps, values)}}``, what was drawn; an arm without a
    metric (e.g. ReFL and implicit accuracy) is left out of that panel and of the returned dict.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed metrics file, no run, or no arm with
            any of the metrics.
    """
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()
    if not isinstance(runs, Mapping):
        runs = {(_metrics_file(p).parent.name or str(p)): p for p in runs}
    if not runs:
        raise ValueError("plot_training_curves needs at least one run")
    data = {label: read_metrics(path) for label, path in runs.items()}
    drawn: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {m: {} for m in metrics}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, rows in data.items():
            steps, vals = curve_series(rows, metric, smooth)
            if len(steps):
                drawn[metric][label] = (steps, vals)
                ax.plot(steps, vals, label=label, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("implicit accuracy (mean over triples)" if metric == IMPLICIT_ACC else metric)
        if metric == IMPLICIT_ACC:
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
        if drawn[metric]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no run logs {metric}", ha="center", va="center", transform=ax.transAxes)
    if not any(drawn.values()):
        plt.close(fig)
        raise ValueError(f"none of the runs {list(data)} logs any of {list(metrics)}")
    if title or smooth > 1:
        fig.suptitle((title or "") + (f" (moving average over {smooth} logged steps)" if smooth > 1 else ""))
    fig.tight_layout()
    figure_png(fig, out, dpi=100)
    return {m: d for m, d in drawn.items() if d}
