"""The ablation's differences as a picture: each arm minus the base and each named contrast, with
its 95% interval (``differences.png`` beside ``table.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructengine.plots import figure_png, pyplot

__all__ = ["difference_rows", "plot_differences"]


def difference_rows(summary: dict[str, dict[str, Any]], contrasts: dict[str, dict[str, Any]], base_arm: str,
                    metric: str) -> list[dict[str, Any]]:
    """The rows of the figure, in the table's order: ``{label, diff, lo, hi, kind}`` with ``kind``
    "vs base" (every arm with a difference to the base) or "contrast"; a rate metric (0/1) in points."""
    rows: list[dict[str, Any]] = []
    for arm, metrics in summary.items():
        r = metrics.get(metric)
        if arm == base_arm or r is None or "diff" not in r:
            continue
        scale = 100.0 if r.get("binary") else 1.0
        rows.append({"label": f"{arm} - {base_arm}", "diff": scale * r["diff"], "lo": scale * r["diff_ci95"][0],
                     "hi": scale * r["diff_ci95"][1], "kind": "vs base"})
    for name, c in contrasts.items():
        scale = 100.0 if c.get("binary") else 1.0
        rows.append({"label": name, "diff": scale * c["diff"], "lo": scale * c["diff_ci95"][0],
                     "hi": scale * c["diff_ci95"][1], "kind": "contrast"})
    return rows


def plot_differences(rows: list[dict[str, Any]], metric: str, title: str, path: str | Path | None = None,
                     unit: str = "points") -> bytes:
    """A forest plot of ``rows`` (see :func:`difference_rows`): a dot per difference, its 95% interval
    as a bar, the zero line; intervals that exclude 0 in colour, the others grey. Returns PNG bytes
    (written to ``path``)."""
    plt = pyplot()
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * n + 1.3))
    for k, r in enumerate(rows):
        y = n - 1 - k
        clear = r["lo"] > 0 or r["hi"] < 0
        color = ("#1f4fb4" if r["kind"] == "vs base" else "#b4461f") if clear else "#9aa3b2"
        ax.plot([r["lo"], r["hi"]], [y, y], color=color, linewidth=2.2, solid_capstyle="butt")
        ax.plot([r["diff"]], [y], "o", color=color, markersize=5)
        ax.text(r["hi"], y, f"  {r['diff']:+.1f} [{r['lo']:.1f}, {r['hi']:.1f}]", va="center", fontsize=8, color="#333")
    ax.axvline(0, color="#444", linewidth=0.8)
    kinds = [r["kind"] for r in rows]
    if "vs base" in kinds and "contrast" in kinds:
        ax.axhline(n - 0.5 - kinds.index("contrast"), color="#bbb", linewidth=0.6, linestyle="--")
    ax.set_yticks(range(n)[::-1][: len(rows)], [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel(f"difference in {metric} ({unit}), 95% interval", fontsize=8)
    ax.set_title(title, fontsize=9, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    lo = min([r["lo"] for r in rows] + [0.0])
    hi = max([r["hi"] for r in rows] + [0.0])
    ax.set_xlim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.45 * (hi - lo + 1e-9))
    fig.tight_layout()
    return figure_png(fig, path)
