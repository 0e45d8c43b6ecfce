"""The ablation runner: train every arm with every seed, evaluate, and write a table with 95% CIs.

Works on any bundle: the arms train with the shared ``train`` config (any model kind) and every
model is evaluated through the evaluation harness with the ``evaluation`` section's generator and
scorers (``configs/ablation_shapes.yaml`` is the paper's Table 2 in miniature on ShapesWorld,
``configs/ablation_sd15.yaml`` the same protocol on SD1.5). Protocol:

1. **Selection** (optional, ``selection``): for every trained arm, each hyper-parameter candidate
   of ``selection.grid`` is trained with ``selection.train_seed`` and evaluated on a *validation*
   prompt set at each stopping point of ``selection.steps`` (one run extended step by step: resume
   is exact, so the run stopped at 200 is the run to 400 seen at 200). The candidate and stopping
   point with the best ``selection.metric`` are kept. The test benchmark is never used to choose.
2. **Final runs**: each arm with its chosen settings, once per seed of ``seeds``; the base arm
   (``method: null``) is evaluated as is.
3. **Evaluation**: by default the harness samples each model (the base weights, with the arm's
   trained U-Net or LoRA swapped in) with ``evaluation.generator`` on the prompts (a registered
   benchmark or a prompt file; validation: a registered validation set too) and scores every image
   with ``evaluation.scorers``: one row per image with ``prompt_index``, ``seed`` (image seed, the
   same for every arm: paired) and metric columns (NaN = not applicable). A custom ``evaluator``
   ('module:function') is called instead as ``evaluator(model_dir=..., name=..., run_dir=...,
   prompts=..., seeds=..., **evaluator_kwargs)`` with a pipeline folder exported for the model.
4. **Table**: per arm the mean of each metric over seeds and images, a 95% interval from a
   two-level bootstrap (training seeds, then prompts; prompts paired across arms), and the
   difference from the base arm with its own paired interval. Written to
   ``<run_dir>/ablation/<name>/table.md`` and ``summary.json`` with the wall time it took, and
   ``differences.png``: every arm's difference to the base and every named contrast as a forest plot.

Every step is resumable: finished training runs are skipped (or extended), evaluations already on
disk are reused; the untrained base model's scores are shared by every ablation of one ``run_dir``
with the same model, evaluation, prompts and seeds (``<run_dir>/ablation/_shared_base_scores/``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from instructengine.config import Config, apply_overrides, validate_config
from instructengine.experiments.ablation_plot import difference_rows, plot_differences
from instructengine.generation import GeneratorConfig
from instructengine.runs import atomic_write_json, atomic_write_parquet, atomic_write_text, share_files
from instructengine.scorers.spec import ScorerSpec

__all__ = [
    "AblationConfig",
    "Arm",
    "Selection",
    "export_pipeline",
    "format_selection",
    "paired_bootstrap",
    "random_pick_samples",
    "run_ablation",
    "summarize_arms",
    "variance_components",
]

log = logging.getLogger(__name__)

KEY_COLUMNS = ("prompt_index", "seed")


class Arm(Config):
    """One row of the table."""

    name: str = Field(..., description="row label and output folder name")
    method: str | None = Field(..., description="training method (see `instructengine train methods`); null: the base model")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides of the shared `train` config for this arm")
    data: str | None = Field(None, description="what the arm trains on, shown in the table's `data` column (a label only)")


class Evaluation(Config):
    """How every arm's model is evaluated through the harness (same prompts and seeds for all)."""

    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig,
        description="sampling settings; `model` (null: the training's base weights, where the kind allows null) and `unet` is set to each "
        "arm's trained U-Net (or LoRA)",
    )
    scorers: list[ScorerSpec] = Field(default_factory=list, min_length=1, description="scorers of every image")
    batch_size: int = Field(8, ge=1, description="images per generation batch")
    score_batch_size: int = Field(32, ge=1, description="images per scoring batch")
    device: str = Field("cpu", description="torch device of generation and scoring")
    scorer_dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="dtype of the scorer models")
    noise: Literal["shared", "per_prompt"] = Field(
        "shared", description="initial noise (EvalConfig.noise): 'shared' gives every prompt the same noise per image "
        "seed, so one image seed is one draw; 'per_prompt' gives each (prompt, image seed) its own")


class Selection(Config):
    """Choice of hyper-parameters and stopping on a validation prompt set (never the test set)."""

    prompts: str = Field(
        description="validation prompts: a registered validation set (e.g. a bundle's held-out generator), a "
        "registered benchmark, or a prompt file (CSV with prompt[,category], ...)",
    )
    seeds: list[int] = Field(default_factory=lambda: [100, 101], min_length=1, description="image seeds per prompt")
    steps: list[int] = Field(default_factory=lambda: [100, 200, 400], min_length=1,
                             description="stopping points evaluated (optimizer steps)")
    grid: list[list[str]] = Field(
        default_factory=lambda: [[]], min_length=1,
        description="hyper-parameter candidates, each a list of dotted overrides applied to every trained arm",
    )
    metric: str = Field(description="validation metric to maximise (a metric column of the evaluation)")
    train_seed: int = Field(0, description="training seed of the selection runs")


class AblationConfig(Config):
    """An ablation: shared training config, arms, seeds, selection, evaluator."""

    name: str = Field(description="ablation name (folder <run_dir>/ablation/<name>)")
    run_dir: str = Field("runs/ablation", description="run folder")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields shared by every arm")
    arms: list[Arm] = Field(..., min_length=1, description="the rows of the table")
    base_arm: str = Field("base", description="arm the differences are taken against")
    contrasts: list[tuple[str, str]] = Field(
        default_factory=list,
        description="pairs [a, b] of arms whose paired difference a - b in the main metric the table reports "
                    "below the arms (same two-level bootstrap: each arm's training seeds, then the prompts, paired)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="training seeds of the final runs")
    selection: Selection | None = Field(None, description="hyper-parameter/stopping selection; null: use the config as is")
    evaluation: Evaluation | None = Field(None, description="the harness evaluation of every model (see module doc)")
    evaluator: str | None = Field(None, description="instead of `evaluation`: a custom evaluator 'module:function' (see module doc)")
    evaluator_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of a custom evaluator")
    test_prompts: str = Field(description="test prompts: a registered benchmark or a prompt file")
    test_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="image seeds per test prompt")
    metrics: list[str] | None = Field(None, description="metric columns in the table (None: every metric column)")
    main_metric: str | None = Field(None, description="the table's main column (None: the first metric column)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the intervals")
    summarize_only: bool = Field(False, description="train and evaluate nothing: the table of the arm x seed scores "
                                 "already on disk (a partial table of a stopped run; missing runs are listed)")

    @model_validator(mode="after")
    def _arms_are_valid(self) -> "AblationConfig":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if self.base_arm not in names:
            raise ValueError(f"base_arm {self.base_arm!r} is not one of the arms {names}")
        for a, b in self.contrasts:
            for x in (a, b):
                if x not in names:
                    raise ValueError(f"contrast [{a}, {b}]: {x!r} is not one of the arms {names}")
            if a == b:
                raise ValueError(f"contrast [{a}, {b}]: give two different arms")
        if (self.evaluation is None) == (self.evaluator is None):
            raise ValueError("give exactly one of `evaluation` (the harness: generator + scorers) and `evaluator` "
                             "('module:function')")
        for arm in self.arms:
            if arm.method is not None:
                arm_train_config(self, arm, self.seeds[0])  # raises naming the arm
        return self


def arm_train_config(cfg: AblationConfig, arm: Arm, seed: int, extra: list[str] = (), tag: str = "") -> Any:
    """The validated TrainConfig of one arm and seed (``extra`` overrides win, e.g. selection choices)."""
    from instructengine.config import ConfigError
    from instructengine.train.config import TrainConfig

    overrides = [f"method={arm.method}", *arm.overrides, *extra, f"seed={seed}",
                 f"run_dir={Path(cfg.run_dir) / 'ablation' / cfg.name}", f"name={arm.name}{tag}-seed{seed}"]
    try:
        return validate_config(TrainConfig, apply_overrides(cfg.train, overrides), f"arm {arm.name!r}")
    except ConfigError as err:
        raise ValueError(str(err)) from None


# ----------------------------------------------------------------------------------------------
# exporting a trained U-Net as a full pipeline folder
# ----------------------------------------------------------------------------------------------


def export_pipeline(base_dir: str | Path, final_path: Path, lora: bool, out_dir: Path) -> Path:
    """A pipeline folder = the base model's components (linked) + the trained U-Net (LoRA fused in).

    Raises:
        FileNotFoundError: the base folder is not a local diffusers folder.
    """
    base = Path(base_dir)
    if not (base / "unet").is_dir():
        raise FileNotFoundError(f"{base} is not a local diffusers folder with a unet/ (needed to export)")
    if (out_dir / "unet" / "config.json").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in base.iterdir():
        if entry.name != "unet":
            os.symlink(entry.resolve(), tmp / entry.name)
    if lora:
        from instructengine.train.models import load_trained_unet

        load_trained_unet(base / "unet", final_path).save_pretrained(tmp / "unet")  # LoRA fused in
    else:
        shutil.copytree(final_path, tmp / "unet")
    share_files(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


def _load_callable(spec: str) -> Callable[..., pd.DataFrame]:
    from instructengine.registry import load_object

    return load_object(spec, "evaluator")


def _benchmark(prompts: str) -> dict[str, Any]:
    """The harness's benchmark section for a registered benchmark name or a prompt file."""
    from instructengine import registry

    if prompts in registry.available("benchmark"):
        return {"name": prompts}
    path = Path(prompts)
    if not path.exists():
        raise ValueError(f"prompts {prompts!r} are neither a registered benchmark {registry.available('benchmark')} "
                         "nor an existing prompt file")
    return {"name": path.stem, "path": str(path)}


def harness_evaluator(cfg: AblationConfig, tcfg: Any, unet: Path | None, name: str, run_dir: Path, prompts: str,
                      seeds: list[int]) -> pd.DataFrame:
    """The default evaluator: the arm's model (base weights + trained U-Net) through the harness."""
    from instructengine.evaluate.config import EvalConfig
    from instructengine.evaluate.runner import evaluate

    ev = cfg.evaluation
    assert ev is not None
    model = {**ev.generator.model_dump(mode="json"), "name": name, "unet": str(unet) if unet else None}
    model["model"] = model.get("model") or tcfg.model.source()
    ecfg = validate_config(EvalConfig, {
        "run_dir": str(run_dir), "benchmark": _benchmark(prompts), "seeds": list(seeds),
        "batch_size": ev.batch_size, "score_batch_size": ev.score_batch_size, "device": ev.device,
        "scorer_dtype": ev.scorer_dtype, "scorers": [s.model_dump(mode="json") for s in ev.scorers],
        "models": [model], "report": {"after_eval": False}, "noise": ev.noise,
    }, f"ablation {cfg.name!r} evaluation of {name!r}")
    folders = evaluate(ecfg, log=lambda s: None)
    df = pd.read_parquet(Path(folders[name]) / "scores.parquet")
    df["noise"] = ev.noise  # a text column: not a metric; lets a cached file be checked against the config
    return df


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def _per_prompt(scores: list[pd.DataFrame], metric: str, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seeds x prompts) sums and counts of a metric (NaN rows are not applicable and not counted)."""
    sums = np.zeros((len(scores), len(prompts)))
    counts = np.zeros((len(scores), len(prompts)))
    pos = {p: i for i, p in enumerate(prompts)}
    for s, df in enumerate(scores):
        d = df[["prompt_index", metric]].dropna()
        idx = d.prompt_index.map(pos).to_numpy()
        np.add.at(sums[s], idx, d[metric].to_numpy(dtype=float))
        np.add.at(counts[s], idx, 1)
    return sums, counts


def paired_bootstrap(arm: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray] | None,
                     n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean and 95% interval of an arm's metric (and of arm - base) by a two-level bootstrap.

    Each resample draws training seeds with replacement (the arm's rows), then prompts with
    replacement -- the SAME prompts for the arm and the base (paired).
    """
    sums, counts = arm
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = sums.shape
    mean = sums.sum() / max(counts.sum(), 1)
    stats, diffs = np.empty(n), np.empty(n)
    base_mean = None
    if base is not None:
        base_mean = base[0].sum() / max(base[1].sum(), 1)
    for b in range(n):
        rows = rng.integers(0, n_seeds, n_seeds)
        cols = rng.integers(0, n_prompts, n_prompts)
        s, c = sums[rows][:, cols].sum(), counts[rows][:, cols].sum()
        stats[b] = s / max(c, 1)
        if base is not None:
            brows = rng.integers(0, base[0].shape[0], base[0].shape[0])
            bs, bc = base[0][brows][:, cols].sum(), base[1][brows][:, cols].sum()
            diffs[b] = stats[b] - bs / max(bc, 1)
    out = {"mean": float(mean), "ci95": [float(x) for x in np.percentile(stats, [2.5, 97.5])],
           "n": int(counts.sum())}
    if base is not None:
        out["diff"] = float(mean - base_mean)
        out["diff_ci95"] = [float(x) for x in np.percentile(diffs, [2.5, 97.5])]
    return out


def summarize_arms(scores: dict[str, list[pd.DataFrame]], base_arm: str, metrics: list[str] | None = None,
                   n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Per arm and metric: mean, 95% CI, and the paired difference from ``base_arm``."""
    every = pd.concat([df for dfs in scores.values() for df in dfs])
    metrics = metrics or [c for c in every.columns if c not in KEY_COLUMNS and every[c].dtype.kind in "fiub"]
    prompts = np.unique(every.prompt_index.to_numpy())
    out: dict[str, dict[str, Any]] = {}
    for arm, dfs in scores.items():
        out[arm] = {}
        for m in metrics:
            arm_pp = _per_prompt(dfs, m, prompts)
            if arm_pp[1].sum() == 0:
                continue
            base_pp = None if arm == base_arm else _per_prompt(scores[base_arm], m, prompts)
            out[arm][m] = paired_bootstrap(arm_pp, base_pp, n_boot)
            out[arm][m]["binary"] = bool(every[m].dropna().isin([0, 1]).all())
    return out


def summarize_contrasts(scores: dict[str, list[pd.DataFrame]], contrasts: list[tuple[str, str]], metric: str,
                        n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Per contrast ``(a, b)``: the paired difference ``a - b`` of ``metric`` and its 95% interval by the
    two-level bootstrap of :func:`paired_bootstrap` (each arm's training seeds drawn independently, the
    same prompts for both). Contrasts with an arm without scores (a partial run) are left out."""
    every = pd.concat([df for dfs in scores.values() for df in dfs])
    prompts = np.unique(every.prompt_index.to_numpy())
    out: dict[str, dict[str, Any]] = {}
    for a, b in contrasts:
        if not scores.get(a) or not scores.get(b):
            continue
        r = paired_bootstrap(_per_prompt(scores[a], metric, prompts), _per_prompt(scores[b], metric, prompts), n_boot)
        out[f"{a} - {b}"] = {"a": a, "b": b, "diff": r["diff"], "diff_ci95": r["diff_ci95"],
                             "seeds": [len(scores[a]), len(scores[b])],
                             "binary": bool(every[metric].dropna().isin([0, 1]).all())}
    return out


def format_contrasts(contrasts: dict[str, dict[str, Any]], metric: str) -> str:
    lines = [f"| difference | {metric} (95% CI) | half-width | training seeds |", "|---|---|---:|---|"]
    for name, c in contrasts.items():
        scale = 100.0 if c["binary"] else 1.0
        half = scale * (c["diff_ci95"][1] - c["diff_ci95"][0]) / 2
        lines.append(f"| {name} | {_fmt(c, 'diff', 'diff_ci95')} | {half:.{1 if c['binary'] else 3}f} | "
                     f"{c['seeds'][0]} vs {c['seeds'][1]} |")
    return "\n".join(lines) + "\n"


def _score_array(dfs: list[pd.DataFrame], metric: str, prompts: np.ndarray, image_seeds: np.ndarray) -> np.ndarray:
    """(training seeds, prompts, image seeds) array of one metric; NaN where an image is missing."""
    out = np.full((len(dfs), len(prompts), len(image_seeds)), np.nan)
    p_pos = {p: i for i, p in enumerate(prompts)}
    k_pos = {k: i for i, k in enumerate(image_seeds)}
    for s, df in enumerate(dfs):
        d = df[["prompt_index", "seed", metric]].dropna()
        out[s, d.prompt_index.map(p_pos).to_numpy(), d.seed.map(k_pos).to_numpy()] = d[metric].to_numpy(dtype=float)
    return out


def variance_components(scores: dict[str, list[pd.DataFrame]], base_arm: str, metric: str,
                        half_width: float = 0.015) -> dict[str, dict[str, Any]]:
    """Per trained arm with >= 2 training seeds: the variance components of its paired difference
    from ``base_arm`` (:class:`instructengine.evaluate.stats.VarianceComponents`, on the prompts every
    model has all images of), the predicted standard error at this run's size, and the prompts needed
    for an interval of ``half_width`` at 3, 5 and 10 training seeds (None: seeds are the limit)."""
    from instructengine.evaluate.stats import VarianceComponents

    every = pd.concat([df for dfs in scores.values() for df in dfs])
    prompts = np.unique(every.prompt_index.to_numpy())
    image_seeds = np.unique(every.seed.to_numpy())
    base = _score_array(scores[base_arm], metric, prompts, image_seeds)[0]
    out: dict[str, dict[str, Any]] = {}
    for arm, dfs in scores.items():
        if arm == base_arm or len(dfs) < 2:
            continue
        a = _score_array(dfs, metric, prompts, image_seeds)
        ok = ~np.isnan(a).any(axis=(0, 2)) & ~np.isnan(base).any(axis=1)
        if ok.sum() < 2:
            continue
        vc = VarianceComponents.estimate(a[:, ok], base[ok])
        s, p, k = a[:, ok].shape
        out[arm] = {"components": vc.__dict__, "n_seeds": s, "n_prompts": p, "n_images": k,
                    "se": vc.se(p, s, k),
                    "prompts_needed": {str(n): vc.prompts_needed(half_width, n, k) for n in (3, 5, 10)}}
    return out


def _fmt(entry: dict[str, Any] | None, key: str = "mean", ci: str | None = "ci95") -> str:
    """Binary metrics in percent (1 decimal), others as is (3 decimals); '+' on positive differences."""
    if not entry or key not in entry:
        return "-"
    scale, digits = (100.0, 1) if entry.get("binary", True) else (1.0, 3)
    sign = "+" if key == "diff" and entry[key] > 0 else ""
    text = f"{sign}{scale * entry[key]:.{digits}f}"
    if ci:
        lo, hi = entry[ci]
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text


def format_table(summary: dict[str, dict[str, Any]], arms: list[Arm], base_arm: str, main_metric: str) -> str:
    metrics = [m for m in next(iter(summary.values())) if m != main_metric]
    with_data = any(a.data for a in arms)
    head = ["arm", "method", *(["data"] if with_data else []), f"{main_metric} (95% CI)",
            f"diff vs {base_arm} (95% CI)", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        s = summary.get(arm.name, {})
        row = [arm.name, arm.method or "-", *([arm.data or "-"] if with_data else []), _fmt(s.get(main_metric)),
               _fmt(s.get(main_metric), "diff", "diff_ci95") if arm.name != base_arm else "-"]
        row += [_fmt(s.get(m), ci=None) for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def format_metric_differences(summary: dict[str, dict[str, Any]], arms: list[Arm], base_arm: str) -> str:
    """Every metric's paired difference from ``base_arm`` with its 95% interval, one row per trained arm;
    **bold** where the interval excludes 0 (where an arm moved the model, even if the main metric did not)."""
    metrics = list(dict.fromkeys(m for a in arms for m in summary.get(a.name, {})))
    lines = ["| arm | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for arm in arms:
        s = summary.get(arm.name, {})
        if arm.name == base_arm or not s:
            continue
        cells = []
        for m in metrics:
            text = _fmt(s.get(m), "diff", "diff_ci95")
            lo, hi = s[m]["diff_ci95"] if "diff_ci95" in s.get(m, {}) else (0.0, 0.0)
            cells.append(f"**{text}**" if lo > 0 or hi < 0 else text)
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------


def _base_cache_path(cfg: AblationConfig, tcfg: Any, prompts: str, seeds: list[int]) -> Path:
    """Where the untrained base model's scores are shared between ablations of one ``run_dir``: keyed
    by everything they depend on (model, evaluation or evaluator settings, prompts and their file
    content, image seeds), so follow-up ablations on the same base never sample it again."""
    import hashlib
    import json

    prompt_file = Path(prompts)
    payload = {
        "model": tcfg.model.model_dump(mode="json"), "prompts": prompts, "seeds": [int(s) for s in seeds],
        "prompt_file_sha1": hashlib.sha1(prompt_file.read_bytes()).hexdigest() if prompt_file.is_file() else None,
        "evaluation": _evaluation_key(cfg),
        "evaluator": cfg.evaluator, "evaluator_kwargs": cfg.evaluator_kwargs,
    }
    key = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.run_dir) / "ablation" / "_shared_base_scores" / f"{key}.parquet"


def _evaluation_key(cfg: AblationConfig) -> dict[str, Any] | None:
    """The evaluation settings that key the shared base scores. The default noise is left out, so keys made
    before the `noise` option existed still match."""
    if cfg.evaluation is None:
        return None
    ev = cfg.evaluation.model_dump(mode="json")
    if ev.get("noise") == "shared":
        ev.pop("noise")
    return ev


def _cached_scores(cache: Path, seeds: list[int], noise: str | None = None) -> pd.DataFrame:
    """Scores on disk, refused when they were made with other image seeds (or, for the harness, another
    ``noise``; files without a noise column were made with shared noise) than these."""
    df = pd.read_parquet(cache)
    found = sorted(int(x) for x in pd.unique(df["seed"])) if "seed" in df.columns else []
    if found != sorted(int(x) for x in seeds):
        raise ValueError(f"{cache}: cached scores have image seeds {found}, this config asks for {sorted(seeds)}; "
                         "delete the file or give the ablation another name")
    if noise is not None:
        made = sorted(pd.unique(df["noise"])) if "noise" in df.columns else ["shared"]
        if made != [noise]:
            raise ValueError(f"{cache}: cached scores were made with noise {made}, this config asks for {noise!r}; "
                             "delete the file or give the ablation another name")
    return df


def _noise(cfg: AblationConfig) -> str | None:
    """The harness's noise setting (None with a custom evaluator, which is given seeds only)."""
    return cfg.evaluation.noise if cfg.evaluator is None and cfg.evaluation is not None else None


def _evaluate(cfg: AblationConfig, tcfg: Any, trained: Any, name: str, prompts: str, seeds: list[int],
              root: Path) -> pd.DataFrame:
    """Scores of one model (``trained``: a TrainResult, or None for the base weights), cached on disk;
    the base model's scores are also shared between the ablations of one ``run_dir``."""
    cache = root / "scores" / f"{name}.parquet"
    if cache.is_file():
        return _cached_scores(cache, seeds, _noise(cfg))
    shared = _base_cache_path(cfg, tcfg, prompts, seeds) if trained is None else None
    if shared is not None and shared.is_file():
        df = pd.read_parquet(shared)
        atomic_write_parquet(cache, df)
        log.info("base scores of %s on %s reused from %s", name, Path(prompts).name, shared)
        return df
    if cfg.evaluator is None:
        df = harness_evaluator(cfg, tcfg, trained.final_path if trained else None, name, root, prompts, seeds)
    else:
        base = Path(tcfg.model.source())
        model_dir = base if trained is None else export_pipeline(
            base, trained.final_path, tcfg.lora.enabled, root / "exports" / f"{tcfg.output_name}-step{trained.steps}")
        df = _load_callable(cfg.evaluator)(model_dir=model_dir, name=name, run_dir=root, prompts=prompts, seeds=seeds,
                                           **cfg.evaluator_kwargs)
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"evaluator of {name!r} returned no {missing} column(s); see instructengine.experiments.ablation")
    atomic_write_parquet(cache, df)
    if shared is not None:
        atomic_write_parquet(shared, df)
    log.info("evaluated %s on %s: %d images", name, Path(prompts).name, len(df))
    return df


def _train_and_evaluate(cfg: AblationConfig, tcfg: Any, root: Path, eval_name: str, prompts: str,
                        seeds: list[int]) -> tuple[pd.DataFrame, float]:
    """Scores of a trained model; skips training when its scores are already on disk (a selection run
    extended past this stopping point cannot be stopped earlier again)."""
    from instructengine.train.trainer import run_training

    cache = root / "scores" / f"{eval_name}.parquet"
    if cache.is_file():
        return _cached_scores(cache, seeds, _noise(cfg)), 0.0
    log.info("training %s (%s, max_steps %s)", tcfg.output_name, tcfg.method, tcfg.max_steps)
    t0 = time.perf_counter()
    result = run_training(tcfg)
    seconds = time.perf_counter() - t0
    log.info("trained %s in %.0f s", tcfg.output_name, seconds)
    return _evaluate(cfg, tcfg, result, eval_name, prompts, seeds, root), seconds


def _selection_prompts(cfg: AblationConfig, root: Path) -> str:
    """A registered validation set written to ``root`` as a CSV, or the benchmark / file named."""
    from instructengine import registry

    assert cfg.selection is not None
    name = cfg.selection.prompts
    if name in registry.available("validation_prompts"):
        return str(registry.instantiate("validation_prompts", name, root / f"validation_prompts-{name}.csv"))
    return name


def _binary(values: pd.Series) -> bool:
    return bool(values.dropna().isin([0, 1]).all())


def format_selection(rows: list[dict[str, Any]], chosen: dict[str, list[str]], metric: str) -> str:
    """Markdown table of the selection runs on the validation prompts (the base arm as reference)."""
    lines = [f"| arm | settings | steps | validation {metric} |", "|---|---|---|---|"]
    for r in rows:
        settings = " ".join(r["overrides"]) or "-"
        picked = r["grid"] is not None and chosen.get(r["arm"]) == [*r["overrides"], f"max_steps={r['steps']}"]
        value = f"{100 * r[metric]:.1f}" if r["binary"] else f"{r[metric]:.3f}"
        lines.append(f"| {r['arm']} | {settings} | {r['steps'] or '-'} | {'**' + value + '** (chosen)' if picked else value} |")
    return "\n".join(lines) + "\n"


def _select(cfg: AblationConfig, arm: Arm, root: Path, log_rows: list[dict[str, Any]]) -> list[str]:
    sel = cfg.selection
    assert sel is not None
    prompts = _selection_prompts(cfg, root)
    best: tuple[float, list[str]] | None = None
    for g, grid in enumerate(sel.grid):
        for steps in sorted(sel.steps):
            extra = [*grid, f"max_steps={steps}"]
            tcfg = arm_train_config(cfg, arm, sel.train_seed, extra, tag=f"-sel{g}")
            scores, seconds = _train_and_evaluate(cfg, tcfg, root, f"val-{tcfg.output_name}-step{steps}", prompts,
                                                  sel.seeds)
            value = float(scores[sel.metric].mean())
            log_rows.append({"arm": arm.name, "grid": g, "overrides": grid, "steps": steps, sel.metric: value,
                             "binary": _binary(scores[sel.metric]), "train_s": round(seconds, 1)})
            log.info("selection %s grid %d step %d: %s=%.4f", arm.name, g, steps, sel.metric, value)
            if best is None or value > best[0]:
                best = (value, extra)
    assert best is not None
    return best[1]


def run_ablation(cfg: AblationConfig) -> Path:
    """Run (or resume) the whole ablation; returns the path of ``table.md``."""
    t_start = time.perf_counter()
    root = Path(cfg.run_dir) / "ablation" / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    from instructengine.config import save_resolved

    if not cfg.summarize_only:
        save_resolved(cfg, root / "config.yaml")
    scores: dict[str, list[pd.DataFrame]] = {}
    timings: dict[str, float] = {}
    selection_log: list[dict[str, Any]] = []
    chosen: dict[str, list[str]] = {}
    from instructengine.progress import Progress

    # one unit per test model: a base arm once, a trained arm once per seed (its selection runs inside)
    bar = Progress(f"ablation {cfg.name}", sum(1 if a.method is None else len(cfg.seeds) for a in cfg.arms), unit="run")
    missing: list[str] = []
    for arm in cfg.arms:
        if arm.method is None:
            from instructengine.train.config import TrainConfig

            base = validate_config(TrainConfig, apply_overrides(cfg.train, arm.overrides), f"arm {arm.name!r}")
            scores[arm.name] = [_evaluate(cfg, base, None, arm.name, cfg.test_prompts, cfg.test_seeds, root)]
            if cfg.selection:  # the reference point of the selection: the base model on the validation prompts
                val = _evaluate(cfg, base, None, f"val-{arm.name}", _selection_prompts(cfg, root),
                                cfg.selection.seeds, root)
                metric = cfg.selection.metric
                selection_log.append({"arm": arm.name, "grid": None, "overrides": [], "steps": 0,
                                      metric: float(val[metric].mean()), "binary": _binary(val[metric]), "train_s": 0.0})
            bar.update(1, arm=arm.name)
            continue
        if cfg.summarize_only:
            found = [root / "scores" / f"{arm.name}-seed{seed}.parquet" for seed in cfg.seeds]
            missing += [p.stem for p in found if not p.is_file()]
            if any(p.is_file() for p in found):
                scores[arm.name] = [pd.read_parquet(p) for p in found if p.is_file()]
            continue
        extra = _select(cfg, arm, root, selection_log) if cfg.selection else []
        chosen[arm.name] = extra
        scores[arm.name] = []
        for seed in cfg.seeds:
            tcfg = arm_train_config(cfg, arm, seed, extra)
            df, seconds = _train_and_evaluate(cfg, tcfg, root, f"{arm.name}-seed{seed}", cfg.test_prompts,
                                              cfg.test_seeds)
            timings[f"{arm.name}-seed{seed}"] = round(seconds, 1)
            scores[arm.name].append(df)
            bar.update(1, arm=f"{arm.name}-seed{seed}")
    bar.close()
    summary = summarize_arms(scores, cfg.base_arm, cfg.metrics, cfg.bootstrap)
    wall = time.perf_counter() - t_start
    main_metric = cfg.main_metric or next(iter(next(iter(summary.values()))))
    table = format_table(summary, cfg.arms, cfg.base_arm, main_metric)
    note = (f"\n{len(cfg.seeds)} training seeds per trained arm; test prompts {cfg.test_prompts!r} x image seeds "
            f"{cfg.test_seeds}; 95% intervals: two-level bootstrap (seeds, prompts; paired with {cfg.base_arm!r}), "
            f"{cfg.bootstrap} resamples. Wall time of this invocation: {wall / 60:.1f} min.\n")
    if missing:
        note += (f"\n**Partial table** (summarize_only): no scores yet for {', '.join(missing)}; those rows show "
                 f"what is on disk (arms with fewer seeds than {len(cfg.seeds)}) or '-'.\n")
    if cfg.selection:
        sel = cfg.selection
        note += (f"\n## Selection on validation prompts ({sel.prompts!r} x image seeds {sel.seeds}; one training "
                 f"seed, {sel.train_seed})\n\n" + format_selection(selection_log, chosen, sel.metric))
    if any(a.name != cfg.base_arm and summary.get(a.name) for a in cfg.arms):
        note += (f"\n## Every metric's difference vs {cfg.base_arm} (95% CI; bold: the interval excludes 0)\n\n"
                 + format_metric_differences(summary, cfg.arms, cfg.base_arm))
    contrasts = summarize_contrasts(scores, cfg.contrasts, main_metric, cfg.bootstrap)
    if contrasts:
        note += "\n## Differences between arms\n\n" + format_contrasts(contrasts, main_metric)
    components = variance_components(scores, cfg.base_arm, main_metric)
    name = "table-partial" if cfg.summarize_only else "table"
    rows = difference_rows(summary, contrasts, cfg.base_arm, main_metric)
    if rows:
        plot_differences(rows, main_metric, f"{cfg.name} on {cfg.test_prompts}, training seeds {cfg.seeds}"
                         + (" (partial: the seeds on disk)" if cfg.summarize_only else ""),
                         root / f"differences{'-partial' if cfg.summarize_only else ''}.png")
    atomic_write_json(root / f"{'summary-partial' if cfg.summarize_only else 'summary'}.json",
                      {"summary": summary, "chosen": chosen, "selection": selection_log,
                       "contrasts": contrasts, "variance_components": components, "train_seconds": timings,
                       "wall_seconds": round(wall, 1), "missing": missing})
    return atomic_write_text(root / f"{name}.md", table + note)


def random_pick_samples(samples_dir: str | Path, candidates: str | Path, out_dir: str | Path, seed: int = 0,
                        prompt_column: str = "prompt", image_column: str = "image") -> Path:
    """The "random image pick" ablation's data: the same samples with y1/y2 drawn at random among
    each instruction's candidates instead of the best-of-N pick.

    ``candidates`` is a table (parquet) with one row per generated image, its instruction in
    ``prompt_column`` and its path (relative to the table's folder) in ``image_column``. Samples whose
    instruction has no candidate are dropped and counted in ``<out_dir>/manifest.json``.
    """
    from instructengine.data.schema import load_samples
    from instructengine.runs import StageDir

    df, src = load_samples(samples_dir)
    cand_path = Path(candidates)
    cand = pd.read_parquet(cand_path)
    for col in (prompt_column, image_column):
        if col not in cand.columns:
            raise ValueError(f"{cand_path}: no column {col!r}; present: {list(cand.columns)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_prompt = cand.groupby(prompt_column)[image_column].apply(list).to_dict()
    rng = np.random.default_rng(seed)
    rows, dropped = [], 0
    for row in df.to_dict("records"):
        c1, c2 = by_prompt.get(row["instruction_1"]), by_prompt.get(row["instruction_2"])
        if not c1 or not c2:
            dropped += 1
            continue
        for k, pool in (("1", c1), ("2", c2)):
            pick = cand_path.parent / pool[int(rng.integers(len(pool)))]
            row[f"image_{k}"] = os.path.relpath(pick, out)
            row[f"score_{k}"] = float("nan")
        rows.append(row)
    stage = StageDir(out.parent, out.name)
    manifest = stage.new_manifest()
    manifest.count_in, manifest.count_out = len(df), len(rows)
    if dropped:
        manifest.drop("instruction without candidates", dropped)
    manifest.inputs = {"samples": str(src), "candidates": str(cand_path)}
    atomic_write_parquet(out / "samples.parquet", pd.DataFrame(rows, columns=df.columns))
    stage.write_manifest(manifest)
    return out / "samples.parquet"

