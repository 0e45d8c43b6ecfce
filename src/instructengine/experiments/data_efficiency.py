"""The data-efficiency study (the paper's Figure 5): the metric against the number of training samples.

Per *curve* (a prompt / preference source with its method: InstructEngine samples with CV-DPO, a
public preference source with Diffusion-DPO, ...) and per size ``n`` of ``sizes``, one training per
training seed on the seeded, nested, stratified random subset of ``n`` items
(``data.max_items = n``, ``data.subset_seed``; :func:`instructengine.train.sources.nested_subset`:
the subset of 250 lies inside the subset of 500, each holds every (theme, dimension) stratum in
proportion to within one item, and it is never the first ``n`` rows). A size at or above a source's
item count means "all of it" (``include_all`` adds that point). An item is what the method trains on:
a cross-validation sample (two instructions, two images) for CV-DPO, a (caption; winner, loser)
pair for Diffusion-DPO.

Every trained model and the base are evaluated like the ablation runner does (same harness, prompts
and image seeds, so every point is paired with the base); the arms are run by
:func:`instructengine.experiments.ablation.run_ablation`, which makes the whole study resumable.
Outputs in ``<run_dir>/ablation/<name>/``: the runner's ``table.md`` / ``summary.json``, plus

* ``subsets.json`` - per curve the number of items of the full source, and per size the indices (into
  the full source's item list) of the items that size trains on, with their stratum counts;
* ``points.csv`` - curve, size, mean, 95% interval, difference from the base and its interval;
* ``figure.png`` - the metric against the size (log scale), one line per curve with interval bars,
  the base model as a dashed line.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from instructengine.config import Config, apply_overrides, validate_config
from instructengine.experiments.ablation import AblationConfig, Arm, Evaluation, run_ablation
from instructengine.experiments.table1 import PrepareStep, format_prepare, log, run_prepare
from instructengine.runs import atomic_write_json, atomic_write_text

__all__ = ["Curve", "DataEfficiencyConfig", "plot_data_efficiency", "run_data_efficiency", "subset_indices"]


class Curve(Config):
    """One line of the figure: a data source and the method trained on it."""

    name: str = Field(description="curve label and arm-name prefix (letters, digits, '_', '-')")
    method: str = Field(description="training method")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides of the shared `train` config "
                                 "(the data source: data.path, data.source, ...)")
    data: str | None = Field(None, description="what the curve trains on (a label for the table)")


class DataEfficiencyConfig(Config):
    """Sizes x curves x training seeds, evaluated against the base."""

    name: str = Field(description="study name (folder <run_dir>/ablation/<name>)")
    run_dir: str = Field("runs/data_efficiency", description="run folder")
    prepare: list[PrepareStep] = Field(default_factory=list, description="data steps run first (see experiments.table1)")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields shared by every training")
    curves: list[Curve] = Field(..., min_length=1, description="the lines of the figure")
    sizes: list[int] = Field(..., min_length=1, description="subset sizes in training items (ascending)")
    include_all: bool = Field(True, description="also train on the whole source (its last point)")
    subset_seed: int = Field(0, description="seed of the nested subsets (one order per source: nested across sizes)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="training seeds per point")
    evaluation: Evaluation = Field(description="the harness evaluation of every model (see experiments.ablation)")
    test_prompts: str = Field(description="test prompts: a registered benchmark or a prompt file")
    test_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="image seeds per test prompt")
    metrics: list[str] | None = Field(None, description="metric columns in the table (None: every metric column)")
    main_metric: str | None = Field(None, description="the plotted metric (None: the first metric column)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the intervals")
    summarize_only: bool = Field(False, description="train nothing: points, table and figure of the runs on disk "
                                 "(a stopped run's partial figure, written as *-partial)")

    @model_validator(mode="after")
    def _check(self) -> "DataEfficiencyConfig":
        if sorted(set(self.sizes)) != self.sizes or self.sizes[0] < 1:
            raise ValueError(f"sizes must be distinct positive integers in ascending order, got {self.sizes}")
        names = [c.name for c in self.curves]
        if len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"curve names must be unique and not 'base', got {names}")
        return self


def _train_config(cfg: DataEfficiencyConfig, curve: Curve, n: int | None) -> Any:
    from instructengine.config import ConfigError
    from instructengine.train.config import TrainConfig

    over = [f"method={curve.method}", *curve.overrides, f"data.max_items={'null' if n is None else n}",
            f"data.subset_seed={cfg.subset_seed}"]
    try:
        return validate_config(TrainConfig, apply_overrides(cfg.train, over), f"curve {curve.name!r}")
    except ConfigError as err:
        raise ValueError(str(err)) from None


def _strata(tcfg: Any, items: list[Any]) -> list[str]:
    """(theme, dimension) of each item whose instruction a samples table names, else one group."""
    from instructengine.data.schema import load_samples

    try:
        df, _ = load_samples(tcfg.data.path)
    except (FileNotFoundError, ValueError):
        return ["-"] * len(items)
    key: dict[tuple[str, ...], str] = {}
    for r in df.itertuples(index=False):
        k = f"{getattr(r, 'theme', None)}|{getattr(r, 'dimension', None)}"
        x1, x2 = str(r.instruction_1), str(r.instruction_2)
        for texts in ((x1, x2), (x1,), (x2,)):  # a sample (quad), or one of its triples / pairs
            key.setdefault(texts, k)
    return [key.get(tuple(it.texts), "-") for it in items]


def subset_indices(tcfg_of: Any, sizes: list[int], include_all: bool = True) -> dict[str, Any]:
    """For one curve: the full source's item count and, per size below it (plus the count itself with
    ``include_all``), the indices (into the full item list, ascending) of the items that size trains on
    and their stratum counts. ``tcfg_of(n)`` is the curve's TrainConfig at size ``n`` (None: all); the
    items come from the trainer's own reader."""
    from instructengine.train.data import build_items
    from instructengine.train.methods import METHODS

    full_cfg = tcfg_of(None)
    method = METHODS[full_cfg.method]
    full, _, _ = build_items(method.source, method.layout, full_cfg.data)
    position = {(it.texts, it.images): i for i, it in enumerate(full)}
    strata = _strata(full_cfg, full)
    out: dict[str, Any] = {"items": len(full), "strata": dict(Counter(strata)), "sizes": {}}
    for n in [m for m in sizes if m < len(full)] + ([len(full)] if include_all else []):
        if n >= len(full):
            idx = list(range(len(full)))
        else:
            sub, _, _ = build_items(method.source, method.layout, tcfg_of(n).data)
            idx = sorted(position[(it.texts, it.images)] for it in sub)
        out["sizes"][str(n)] = {"indices": idx, "strata": dict(Counter(strata[i] for i in idx))}
    return out


def plot_data_efficiency(points: list[dict[str, Any]], base: dict[str, Any], metric: str, out_png: Path,
                         binary: bool = True) -> Path:
    """The figure: metric vs size per curve (95% interval bars), the base as a dashed line (its band shaded)."""
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()
    scale = 100.0 if binary else 1.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    curves = list(dict.fromkeys(p["curve"] for p in points))
    for c in curves:
        ps = sorted((p for p in points if p["curve"] == c), key=lambda p: p["size"])
        x = [p["size"] for p in ps]
        y = [scale * p["mean"] for p in ps]
        err = [[scale * (p["mean"] - p["ci95"][0]) for p in ps], [scale * (p["ci95"][1] - p["mean"]) for p in ps]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=c)
    ax.axhline(scale * base["mean"], color="grey", linestyle="--", label="base")
    ax.axhspan(scale * base["ci95"][0], scale * base["ci95"][1], color="grey", alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("training samples (nested random subsets)")
    ax.set_ylabel(f"{metric} (%)" if binary else metric)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figure_png(fig, out_png, dpi=120)
    return out_png


def run_data_efficiency(cfg: DataEfficiencyConfig) -> Path:
    """Prepare, train every (curve, size, seed), evaluate, write table, points and figure; returns ``figure.png``."""
    t0 = time.perf_counter()
    root = Path(cfg.run_dir) / "ablation" / cfg.name
    done = [] if cfg.summarize_only else run_prepare(cfg.prepare, root)
    subsets: dict[str, Any] = {}
    points: list[tuple[int, int, Arm]] = []
    for c, curve in enumerate(cfg.curves):
        info = subset_indices(lambda n, c=curve: _train_config(cfg, c, n), cfg.sizes, cfg.include_all)
        sizes = [int(n) for n in info["sizes"]]
        subsets[curve.name] = info
        for n in sizes:
            points.append((n, c, Arm(name=f"{curve.name}-n{n}", method=curve.method, data=curve.data,
                                     overrides=[*curve.overrides, f"data.max_items={n}",
                                                f"data.subset_seed={cfg.subset_seed}"])))
        log.info("curve %s: %d items, sizes %s", curve.name, info["items"], sizes)
    # smallest sizes first, curves interleaved: a run stopped early still has comparable points
    arms = [Arm(name="base", method=None)] + [arm for _, _, arm in sorted(points, key=lambda p: (p[0], p[1]))]
    root.mkdir(parents=True, exist_ok=True)
    if not cfg.summarize_only:
        atomic_write_json(root / "subsets.json", subsets)
    acfg = AblationConfig.model_validate({
        "name": cfg.name, "run_dir": cfg.run_dir, "train": cfg.train, "arms": [a.model_dump() for a in arms],
        "base_arm": "base", "seeds": cfg.seeds, "evaluation": cfg.evaluation.model_dump(mode="json"),
        "test_prompts": cfg.test_prompts, "test_seeds": cfg.test_seeds, "metrics": cfg.metrics,
        "main_metric": cfg.main_metric, "bootstrap": cfg.bootstrap, "summarize_only": cfg.summarize_only})
    table = run_ablation(acfg)
    part = "-partial" if cfg.summarize_only else ""
    summary = json.loads((root / f"summary{part}.json").read_text())["summary"]
    metric = cfg.main_metric or next(iter(summary["base"]))
    points = []
    for curve in cfg.curves:
        for n in subsets[curve.name]["sizes"]:
            if f"{curve.name}-n{n}" not in summary:  # summarize_only: not run yet
                continue
            s = summary[f"{curve.name}-n{n}"][metric]
            points.append({"curve": curve.name, "size": int(n), "mean": s["mean"], "ci95": s["ci95"],
                           "diff": s["diff"], "diff_ci95": s["diff_ci95"]})
    base = summary["base"][metric]
    lines = ["curve,size,mean,ci_low,ci_high,diff,diff_low,diff_high",
             f"base,0,{base['mean']:.6f},{base['ci95'][0]:.6f},{base['ci95'][1]:.6f},0,0,0"]
    lines += [f"{p['curve']},{p['size']},{p['mean']:.6f},{p['ci95'][0]:.6f},{p['ci95'][1]:.6f},{p['diff']:.6f},"
              f"{p['diff_ci95'][0]:.6f},{p['diff_ci95'][1]:.6f}" for p in points]
    atomic_write_text(root / f"points{part}.csv", "\n".join(lines) + "\n")
    png = plot_data_efficiency(points, base, metric, root / f"figure{part}.png", bool(base.get("binary", True)))
    wall = time.perf_counter() - t0
    atomic_write_text(table, table.read_text() + format_prepare(done)
                      + f"\n![{metric} vs training samples]({png.name})\n\nWall time including data preparation "
                        f"and subsets: {wall / 60:.1f} min.\n")
    return png
