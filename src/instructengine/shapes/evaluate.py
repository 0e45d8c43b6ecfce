"""ShapesWorld evaluation: sample a prompt set with fixed seeds, judge with the oracle, score with
the tiny contrastive model, summarise with bootstrap confidence intervals.

Writes the evaluation folder layout of ``instructengine.evaluate`` (``eval/<model>/<benchmark>/``
with images, prompts.parquet, images.parquet, scores.parquet, summary.json, generation.json), so
the report and the human-review app read it like any other evaluation. Images already on disk
are reused: a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from instructengine.config import Config
from instructengine.runs import StageDir, atomic_write_bytes, atomic_write_json, atomic_write_parquet
from instructengine.shapes.oracle import ATTRIBUTES, judge_batch

SHAPES_METRICS = ("exact",) + ATTRIBUTES


class ShapesEvalConfig(Config):
    """Evaluation of one ShapesWorld model on a ShapesWorld prompt set."""

    model_name: str = Field("base", description="name of the model's folder under eval/")
    model_path: Path | None = Field(None, description="ShapesPipeline folder; None: the shipped base model")
    clip_path: Path | None = Field(None, description="contrastive model folder; None: the shipped one")
    benchmark: str = Field("shapesbench", description="'shapesbench' or a CSV file with prompt,category")
    seeds: list[int] = Field([0, 1], min_length=1, description="seeds per prompt (paired across models)")
    guidance_scale: float = Field(5.0, ge=0, description="classifier-free guidance scale")
    num_inference_steps: int = Field(20, ge=1, description="sampler steps")
    sampler: str = Field("dpmpp", pattern="^(dpmpp|ddim)$", description="dpmpp (thresholded) or ddim")
    batch_size: int = Field(200, ge=1, description="images per sampling batch")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for the 95% intervals")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")


def load_prompts(benchmark: str) -> pd.DataFrame:
    if benchmark == "shapesbench":
        from instructengine.shapes.bench import load_shapesbench

        df = load_shapesbench()
    else:
        path = Path(benchmark)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {benchmark!r} is neither 'shapesbench' nor a CSV file")
        df = pd.read_csv(path)
        if "prompt" not in df.columns:
            raise ValueError(f"{benchmark}: needs a 'prompt' column (and optionally 'category')")
        if "category" not in df.columns:
            df["category"] = "all"
    df = df[["prompt", "category"]].reset_index(drop=True)
    df.insert(0, "prompt_index", np.arange(len(df)))
    return df


def bootstrap_ci(values: np.ndarray, groups: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling whole groups (prompts), not single images."""
    values = np.asarray(values, dtype=float)
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(uniq), (n, len(uniq)))
    means = sums[idx].sum(1) / np.maximum(counts[idx].sum(1), 1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(scores: pd.DataFrame, prompts: pd.DataFrame, n_boot: int = 1000) -> dict:
    """Mean, 95% CI and n per metric (NaN = not applicable is excluded), overall and per category."""
    df = scores.merge(prompts[["prompt_index", "category"]], on="prompt_index")
    metrics = [c for c in scores.columns if c not in ("prompt_index", "seed")]

    def block(d: pd.DataFrame) -> dict:
        out = {}
        for m in metrics:
            sub = d[["prompt_index", m]].dropna()
            if sub.empty:
                continue
            lo, hi = bootstrap_ci(sub[m].to_numpy(), sub["prompt_index"].to_numpy(), n_boot)
            out[m] = {"mean": float(sub[m].mean()), "ci95": [lo, hi], "n": int(len(sub))}
        return out

    return {
        "overall": block(df),
        "per_category": {c: block(d) for c, d in df.groupby("category", sort=True)},
    }


def evaluate_shapes(cfg: ShapesEvalConfig, run_dir: str | Path, progress: bool = True) -> Path:
    """Generate (or reuse), judge and score; returns the evaluation folder."""
    import torch
    from PIL import Image

    from instructengine.shapes.contrastive import ShapesClipScorer
    from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR, load_pipeline

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bench_name = "shapesbench" if cfg.benchmark == "shapesbench" else Path(cfg.benchmark).stem
    stage = StageDir(Path(run_dir) / "eval" / cfg.model_name, bench_name)
    manifest = stage.new_manifest(cfg)
    prompts = load_prompts(cfg.benchmark)
    jobs = pd.DataFrame([(int(p), int(s)) for p in prompts.prompt_index for s in cfg.seeds],
                        columns=["prompt_index", "seed"])
    jobs["path"] = [f"images/{p}_{s}.png" for p, s in zip(jobs.prompt_index, jobs.seed)]
    manifest.count_in = len(jobs)
    todo = jobs[[not stage.path(p).exists() for p in jobs.path]]
    model_path = cfg.model_path or DEFAULT_MODEL_DIR
    generation = {
        "model": {"name": cfg.model_name, "path": str(model_path), "kind": "shapes"},
        "seeds": cfg.seeds, "guidance_scale": cfg.guidance_scale,
        "num_inference_steps": cfg.num_inference_steps, "sampler": cfg.sampler,
    }
    t0 = time.time()
    if len(todo):
        pipe = load_pipeline(model_path)
        text = dict(zip(prompts.prompt_index, prompts.prompt))
        with manifest.timed("generate"):
            for i in _progress(range(0, len(todo), cfg.batch_size), progress, "sampling", len(todo), cfg.batch_size):
                chunk = todo.iloc[i:i + cfg.batch_size]
                imgs = pipe([text[p] for p in chunk.prompt_index], list(chunk.seed),
                            guidance_scale=cfg.guidance_scale, num_inference_steps=cfg.num_inference_steps,
                            sampler=cfg.sampler)
                for im, rel in zip(imgs, chunk.path):
                    _save_png(stage.path(rel), im)
    manifest.extra["generated"] = int(len(todo))
    manifest.extra["reused"] = int(len(jobs) - len(todo))
    images = np.stack([np.asarray(Image.open(stage.path(p)).convert("RGB")) for p in jobs.path])
    captions = list(prompts.set_index("prompt_index").loc[jobs.prompt_index, "prompt"])
    with manifest.timed("oracle"):
        verdicts = judge_batch(images, captions)
    scores = jobs[["prompt_index", "seed"]].copy()
    for m in SHAPES_METRICS:
        scores[m] = [np.nan if v[m] is None else float(v[m]) for v in verdicts]
    with manifest.timed("shapes_clip"):
        scores["shapes_clip"] = ShapesClipScorer(cfg.clip_path).score(images, captions)
    summary = summarize(scores, prompts, cfg.bootstrap)
    summary["model"] = cfg.model_name
    summary["benchmark"] = bench_name
    summary["images"] = int(len(jobs))
    atomic_write_json(stage.path("generation.json"), generation)
    atomic_write_parquet(stage.path("prompts.parquet"), prompts)
    imgs_table = jobs.copy()
    imgs_table["nsfw_flagged"] = None
    atomic_write_parquet(stage.path("images.parquet"), imgs_table)
    atomic_write_parquet(stage.path("scores.parquet"), scores)
    atomic_write_json(stage.path("summary.json"), summary)
    manifest.count_out = len(jobs)
    manifest.timings["total"] = round(time.time() - t0, 2)
    manifest.outputs = {k: str(stage.path(k)) for k in
                        ("prompts.parquet", "images.parquet", "scores.parquet", "summary.json")}
    stage.write_manifest(manifest)
    return stage.root


def _progress(it, enabled: bool, desc: str, total_items: int, step: int):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=f"{desc} ({total_items} images)", unit="batch", total=-(-total_items // step))


def _save_png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_summary(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "summary.json").read_text())
