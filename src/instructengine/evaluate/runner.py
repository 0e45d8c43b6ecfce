"""``evaluate(cfg)``: generate each model's images on the benchmark's prompts and seeds, score them.

For every model, in order:

1. **Generate** the missing images (``(prompt_index, seed)`` pairs not in the folder's ledger),
   batch by batch, each PNG written atomically and recorded in the ledger; a killed run resumes.
   ``generation.json`` pins the model settings: re-running a folder with other settings is an error
   (give the model another name), so two folders always hold images made as their json says.
2. **Score** what is not scored yet: each image is decoded once per batch and handed to every
   scorer that still needs it. Scorers are built once per run and shared by all models; a model
   weight used by two scorers is loaded once (:class:`ScorerContext`). A scorer whose options
   changed since the last run is re-run on every image; a new scorer only adds its columns.
3. **Summarise**: per metric mean, std, NaN count and a prompt-level bootstrap CI, the paper's
   Average, per-category means (``summary.json``), and the manifest.

Images that cannot be read are left out of ``scores.parquet`` and counted under
``image_unreadable`` in the manifest; nothing is filled in.

Under ``accelerate launch`` (or torchrun) every process calls :func:`evaluate`: the main process
lists what is missing, each process generates and scores its slice of it (its own GPU for
``device: cuda``; a ledger per process, merged by the main process), and the main process writes
the tables, the summaries and runs the VLM judge. The files equal those of a one-process run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from instructengine.evaluate.benchmarks import PromptSet, load_benchmark
from instructengine.evaluate.config import EvalConfig, ModelSpec, ScorerSpec
from instructengine.generation import build_generator, noise_seed, png_bytes, seeds_for
from instructengine.progress import Progress
from instructengine.scorers.base import Scorer, ScorerContext, build_scorer, columns_of, score_columns
from instructengine.evaluate.stats import bootstrap_mean, per_prompt_means
from instructengine.evaluate.storage import image_relpath, json_safe
from instructengine.runs import Ledger, Manifest, StageDir, atomic_write_bytes, atomic_write_json, atomic_write_parquet

__all__ = ["evaluate", "summarize_scores"]

Log = Callable[[str], None]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _chunks(items: list[Any], n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _ScorerPool:
    """Builds each configured scorer on first use, once per run, shared by all models; one context
    (device, dtype, model cache) per placement, so a model two scorers share is loaded once."""

    def __init__(self, device: str, dtype: str, run_dir: str):
        self.defaults = (device, dtype, run_dir)
        self._contexts: dict[tuple[str, str], ScorerContext] = {}
        self._built: dict[str, Scorer] = {}

    def get(self, spec: ScorerSpec) -> Scorer:
        device, dtype, run_dir = spec.device or self.defaults[0], spec.dtype or self.defaults[1], self.defaults[2]
        key = f"{spec.label}:{spec.kind}:{device}:{dtype}:{_hash(spec.options)}"
        if key not in self._built:
            ctx = self._contexts.setdefault((device, dtype), ScorerContext(device=device, dtype=dtype, run_dir=run_dir))
            self._built[key] = build_scorer(spec.kind, spec.options, ctx)
        return self._built[key]


class _Processes:
    """The accelerate process group (one plain process when not launched): who lists and writes, who
    takes which slice, and how per-process results reach the main process."""

    def __init__(self, device: str):
        from accelerate import PartialState

        # cpu=True lets `accelerate launch --num_processes K` on a machine without GPUs form a gloo group
        self.state = PartialState(cpu=device == "cpu")
        self.n = self.state.num_processes
        self.rank = self.state.process_index
        self.main = self.state.is_main_process
        # 'cuda' means each process's own GPU
        self.device = str(self.state.device) if (self.n > 1 and device == "cuda") else device

    def share(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.n == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj if self.main else None], from_process=0)[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in process order (on every process)."""
        if self.n == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def mine(self, items: list[Any]) -> list[Any]:
        """This process's contiguous slice of ``items`` (accelerate's split)."""
        if self.n == 1:
            return items
        with self.state.split_between_processes(items) as part:
            return list(part)

    def wait(self) -> None:
        self.state.wait_for_everyone()


def evaluate(cfg: EvalConfig, log: Log = print) -> dict[str, Path]:
    """Generate, score and summarise every model of ``cfg``; return {model name: its eval folder}.

    Call it on every process of an accelerate launch (see the module doc); only the main process logs.

    Raises:
        instructengine.errors.DeviceError: ``device`` is CUDA on a machine without one (before any work).
    """
    from instructengine.errors import require_device

    require_device("device", cfg.device)
    procs = _Processes(cfg.device)
    say: Log = log if procs.main else (lambda s: None)
    ps = load_benchmark(cfg.benchmark)
    seeds = seeds_for(cfg.images_per_prompt, cfg.seed, cfg.seeds)
    pool = _ScorerPool(procs.device, cfg.scorer_dtype, cfg.run_dir)
    say(f"benchmark {ps.name}: {len(ps)} prompts x {len(seeds)} seeds; models {[m.name for m in cfg.models]}"
        + (f"; {procs.n} processes" if procs.n > 1 else ""))
    out: dict[str, Path] = {}
    for spec in cfg.models:
        stage = StageDir(cfg.run_dir, f"eval/{spec.name}/{ps.name}")
        manifest = stage.new_manifest(cfg) if procs.main else Manifest(stage=stage.stage)
        manifest.inputs = {"benchmark": ps.source, "model": spec.model or spec.kind}
        with manifest.timed("generate"):
            _generate(spec, ps, seeds, stage, cfg, manifest, say, procs)
        _score(stage, ps, cfg, pool, manifest, say, procs)
        if procs.main:
            stage.write_manifest(manifest)
        procs.wait()
        out[spec.name] = stage.root
    if cfg.judge.enabled and procs.main:
        from instructengine.evaluate.judge import judge_models

        judge_models(cfg, log=log)
    procs.wait()
    return out


# --------------------------------------------------------------------------------------------- generation


def _ledger_name(rank: int) -> str:
    return "images.progress.jsonl" if rank == 0 else f"images.progress.rank{rank}.jsonl"


def _merge_rank_ledgers(folder: Path, ledger: Any) -> None:
    """Fold the other processes' ledgers (of this run, or of a killed one) into the main ledger."""
    for path in sorted(folder.glob("images.progress.rank*.jsonl")):
        for rec in Ledger(path).records():
            key = rec.pop("key")
            if ledger.get(key) != {"key": key, **rec}:
                ledger.add(key, **rec)
        path.unlink()


def _generate(spec: ModelSpec, ps: PromptSet, seeds: list[int], stage: StageDir, cfg: EvalConfig,
              manifest: Manifest, log: Log, procs: "_Processes | None" = None) -> None:
    import pandas as pd

    procs = procs or _Processes(cfg.device)
    folder = stage.root
    settings = spec.model_dump(mode="json")
    if cfg.noise != "shared":  # only a non-default noise enters the hash: folders made before the option stay valid
        settings["noise"] = cfg.noise
    settings_hash = _hash(settings)
    gen_path = folder / "generation.json"
    items = [(pid, prompt, seed) for pid, prompt in zip(ps.ids, ps.prompts) for seed in seeds]
    manifest.count_in = len(items)
    pending: list[tuple[int, str, int]] = []
    error = None
    if procs.main:
        try:
            pending = _pending(spec, folder, gen_path, settings_hash, items, cfg)
        except ValueError as err:
            error = str(err)
        if pending and error is None:
            log(f"[{spec.name}] generating {len(pending)} images (batch {cfg.batch_size})"
                + (f" on {procs.n} processes" if procs.n > 1 else ""))
    pending, error = procs.share((pending, error))
    if error is not None:
        raise ValueError(error)
    if pending:
        mine = procs.mine(pending)
        t0 = time.perf_counter()
        if mine:
            generator = build_generator(spec, procs.device)
            if procs.main:
                describe = generator.describe() if hasattr(generator, "describe") else {"class": type(generator).__name__}
                atomic_write_json(gen_path, {
                    "model": spec.model_dump(mode="json"), "generator": describe, "settings_hash": settings_hash,
                    "benchmark": ps.name, "seeds": seeds, "noise": cfg.noise, "images_per_prompt": len(seeds),
                    "batch_size": cfg.batch_size,
                    "device": cfg.device, "processes": procs.n, "created_at": manifest.started_at,
                    "versions": manifest.versions,
                })
            with Ledger(folder / _ledger_name(procs.rank)) as ledger, \
                    Progress(f"generate {spec.name}", len(mine), unit="image", disable=not procs.main) as bar:
                for batch in _chunks(mine, cfg.batch_size):
                    out = generator.generate([b[1] for b in batch], [noise_seed(cfg.noise, b[0], b[2]) for b in batch])
                    images, flags = out.images, out.flagged
                    if len(images) != len(batch):
                        raise ValueError(f"{spec.name}: generator returned {len(images)} images for {len(batch)} prompts")
                    for j, ((pid, prompt, seed), img) in enumerate(zip(batch, images)):
                        rel = image_relpath(pid, seed)
                        atomic_write_bytes(folder / rel, png_bytes(img))
                        ledger.add(f"{pid}_{seed}", prompt=prompt, path=rel, nsfw=None if flags is None else flags[j])
                    bar.update(len(batch))
            del generator
            gc.collect()
        procs.wait()
        manifest.extra["generated_now"] = len(pending)
        manifest.extra["generation_images_per_s"] = round(len(pending) / max(time.perf_counter() - t0, 1e-9), 3)
    if not procs.main:
        return
    with stage.ledger("images.progress.jsonl") as ledger:
        _merge_rank_ledgers(folder, ledger)
        rows = []
        for pid, prompt, seed in items:
            rec = ledger.get(f"{pid}_{seed}")
            if rec is None or not (folder / rec["path"]).is_file():
                raise ValueError(f"{spec.name}: image {pid}_{seed} is missing after generation; a process probably "
                                 "died - run again to resume")
            rows.append({"prompt_index": pid, "seed": seed, "path": rec["path"], "nsfw_flagged": rec.get("nsfw")})
    images = pd.DataFrame(rows)
    images["nsfw_flagged"] = images["nsfw_flagged"].astype("boolean")
    atomic_write_parquet(folder / "images.parquet", images)
    atomic_write_parquet(folder / "prompts.parquet", ps.to_frame())
    flagged = int(images["nsfw_flagged"].fillna(False).sum())
    if flagged:
        manifest.extra["nsfw_flagged"] = flagged
        log(f"[{spec.name}] the safety checker blacked out {flagged} images (column nsfw_flagged)")


def _pending(spec: ModelSpec, folder: Path, gen_path: Path, settings_hash: str, items: list[tuple[int, str, int]],
             cfg: EvalConfig) -> list[tuple[int, str, int]]:
    """The (prompt_index, prompt, seed) items still without an image (main process).

    Raises:
        ValueError: the folder holds images of other settings or another prompt set.
    """
    if gen_path.is_file():
        old = json.loads(gen_path.read_text())
        if old.get("settings_hash") != settings_hash:
            changed = sorted(k for k, v in spec.model_dump(mode="json").items() if old.get("model", {}).get(k) != v)
            if old.get("noise", "shared") != cfg.noise:
                changed.append("noise")
            raise ValueError(
                f"{str(folder)!r} holds images generated with other settings (changed: {changed}); "
                "give the model another name or delete that folder"
            )
    with Ledger(folder / "images.progress.jsonl") as ledger:
        _merge_rank_ledgers(folder, ledger)  # a killed multi-process run left its other ledgers
        pending = []
        for pid, prompt, seed in items:
            rec = ledger.get(f"{pid}_{seed}")
            if rec is not None and rec["prompt"] != prompt:
                raise ValueError(
                    f"{str(folder)!r}: image {pid}_{seed} was made for prompt {rec['prompt']!r}, but prompt {pid} "
                    f"is now {prompt!r}; this folder belongs to another prompt set (use another benchmark name)"
                )
            if rec is None or not (folder / rec["path"]).is_file():
                pending.append((pid, prompt, seed))
    if pending and cfg.skip_generation:
        raise ValueError(f"{spec.name}: {len(pending)} images are missing in {str(folder)!r} and skip_generation is set")
    if not pending and items and not gen_path.is_file():
        raise ValueError(f"{str(folder)!r}: images are present but generation.json is missing; delete the folder and re-run")
    return pending


# --------------------------------------------------------------------------------------------- scoring


def _score(stage: StageDir, ps: PromptSet, cfg: EvalConfig, pool: _ScorerPool, manifest: Manifest, log: Log,
           procs: "_Processes | None" = None) -> None:
    import pandas as pd

    procs = procs or _Processes(cfg.device)
    folder = stage.root
    prompt_of = dict(zip(ps.ids, ps.prompts))
    plan = _score_plan(folder, cfg) if procs.main else None
    keys, path_of, todo, rows, meta, old = procs.share(plan)
    if rows:
        log(f"[{folder.parent.name}] scoring {len(rows)} images with {sorted(todo)}"
            + (f" on {procs.n} processes" if procs.n > 1 else ""))
    part = _score_rows(procs.mine(rows), folder, path_of, todo, prompt_of, cfg, pool, manifest, show=procs.main)
    parts = procs.gather(part)
    if not procs.main:
        return
    results: dict[str, dict[tuple[int, int], float]] = {}
    unreadable: set[tuple[int, int]] = set()
    failures = manifest.extra.setdefault("scorer_failures", {})
    for p in parts:
        for c, vals in p["results"].items():
            results.setdefault(c, {}).update(vals)
        unreadable |= p["unreadable"]
        for label, m in p["meta"].items():
            meta[label].update(m)
        for reason, n in p["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    for name in {n for p in parts for n in p["timings"]}:  # the slowest process's seconds
        slowest = max(p["timings"].get(name, 0.0) for p in parts)
        manifest.timings[name] = round(manifest.timings.get(name, 0.0) + slowest, 4)
    keep = [k for k in keys if k not in unreadable]
    table = pd.DataFrame({"prompt_index": [k[0] for k in keep], "seed": [k[1] for k in keep]})
    columns = [c for s in cfg.scorers for c in meta[s.label]["columns"]]
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise ValueError(f"scorers write the same column(s) {dup}; each metric column must come from one scorer")
    if old is not None:
        columns += [c for c in old.columns if c not in columns and c not in ("prompt_index", "seed")]
    old_idx = {k: i for i, k in enumerate(zip(old["prompt_index"].astype(int), old["seed"].astype(int)))} if old is not None else {}
    for c in columns:
        new = results.get(c, {})
        vals = []
        for k in keep:
            if k in new:
                vals.append(new[k])
            elif old is not None and c in old.columns and k in old_idx:
                vals.append(float(old[c].iloc[old_idx[k]]))
            else:
                vals.append(np.nan)
        table[c] = np.asarray(vals, dtype=np.float64)
    atomic_write_parquet(folder / "scores.parquet", table)
    atomic_write_json(folder / "scorers.json", meta)

    if unreadable:
        manifest.drop("image_unreadable", len(unreadable))
    manifest.count_out = len(keep)
    manifest.extra["scored_now"] = {name: len(v) for name, v in todo.items()}
    nan = {c: int(table[c].isna().sum()) for c in columns if table[c].isna().any()}
    if nan:
        manifest.extra["not_measured"] = nan
    summary = summarize_scores(table, ps, cfg)
    summary.update(model=folder.parent.name, benchmark=ps.name,
                   scorers={n: {k: v for k, v in m.items() if k != "options_hash"} for n, m in meta.items()})
    atomic_write_json(folder / "summary.json", json_safe(summary))


def _score_plan(folder: Path, cfg: EvalConfig) -> tuple[Any, ...]:
    """What to score (main process): image keys, their paths, per scorer the keys it still needs, the
    rows any scorer needs, the scorer metadata and the old scores table (or None)."""
    import pandas as pd

    images = pd.read_parquet(folder / "images.parquet")
    keys = list(zip(images["prompt_index"].astype(int), images["seed"].astype(int)))
    path_of = dict(zip(keys, images["path"]))
    meta_path = folder / "scorers.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    old = pd.read_parquet(folder / "scores.parquet") if (folder / "scores.parquet").is_file() else None
    old_keys = set(zip(old["prompt_index"].astype(int), old["seed"].astype(int))) if old is not None else set()
    todo: dict[str, set[tuple[int, int]]] = {}
    for spec in cfg.scorers:
        h = _hash({"kind": spec.kind, "options": spec.options})
        prev = meta.get(spec.label)
        fresh = (prev is None or prev.get("options_hash") != h or old is None or not prev.get("columns")
                 or any(c not in old.columns for c in prev["columns"]))
        need = set(keys) if fresh else set(keys) - old_keys
        if need:
            todo[spec.label] = need
        meta[spec.label] = {"options_hash": h, "options": spec.options, "columns": (prev or {}).get("columns", []) if not fresh else []}
    rows = [k for k in keys if any(k in s for s in todo.values())]
    return keys, path_of, todo, rows, meta, old


def _score_rows(rows: list[tuple[int, int]], folder: Path, path_of: dict, todo: dict[str, set], prompt_of: dict,
                cfg: EvalConfig, pool: _ScorerPool, manifest: Manifest, show: bool = True) -> dict[str, Any]:
    """Score this process's rows: each image decoded once per batch for every scorer that needs it."""
    from PIL import Image

    results: dict[str, dict[tuple[int, int], float]] = {}
    unreadable: set[tuple[int, int]] = set()
    meta: dict[str, dict[str, Any]] = {}
    failures: Counter = Counter()
    timings: dict[str, float] = {}
    specs = [s for s in cfg.scorers if s.label in todo]
    bar = Progress(f"score {folder.parent.name}", len(rows), unit="image", disable=not show)
    for batch in _chunks(rows, cfg.score_batch_size):
        decoded: dict[tuple[int, int], Any] = {}
        t0 = time.perf_counter()
        for k in batch:
            try:
                with Image.open(folder / path_of[k]) as im:
                    decoded[k] = im.convert("RGB")
            except (OSError, ValueError):
                unreadable.add(k)
        timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
        for spec in specs:
            sel = [k for k in batch if k in todo[spec.label] and k in decoded]
            if not sel:
                continue
            scorer = pool.get(spec)
            dropped_before = Counter(getattr(scorer, "dropped", None) or {})
            t0 = time.perf_counter()
            cols = score_columns(scorer, [decoded[k] for k in sel], [prompt_of[k[0]] for k in sel])
            timings[f"score:{spec.label}"] = timings.get(f"score:{spec.label}", 0.0) + time.perf_counter() - t0
            # what a scorer could not measure (e.g. a VLM answer that stayed invalid), by reason
            failures.update(Counter(getattr(scorer, "dropped", None) or {}) - dropped_before)
            meta[spec.label] = {"columns": list(columns_of(scorer))}
            if hasattr(scorer, "info"):
                meta[spec.label]["info"] = scorer.info
            for c, vals in cols.items():
                results.setdefault(c, {}).update(zip(sel, vals.tolist()))
        bar.update(len(batch))
    bar.close()
    return {"results": results, "unreadable": unreadable, "meta": meta, "failures": dict(failures), "timings": timings}


def summarize_scores(table, ps: PromptSet, cfg: EvalConfig) -> dict[str, Any]:
    """Per-metric mean/std/n/NaN/bootstrap CI, the Average of ``report.average_metrics``, per-category means."""
    r = cfg.report
    cat_of = dict(zip(ps.ids, ps.categories))
    metrics = [c for c in table.columns if c not in ("prompt_index", "seed")]
    out: dict[str, Any] = {"n_images": int(len(table)), "n_prompts": int(table["prompt_index"].nunique()), "metrics": {}}
    for c in metrics:
        v = table[c].to_numpy(dtype=np.float64)
        ok = ~np.isnan(v)
        entry: dict[str, Any] = {"n": int(ok.sum()), "not_measured": int((~ok).sum())}
        if ok.any():
            _, pp = per_prompt_means(table["prompt_index"].to_numpy(), v)
            ci = bootstrap_mean(pp, r.bootstrap_samples, r.confidence, r.bootstrap_seed)
            entry.update(mean=float(v[ok].mean()), std=float(v[ok].std(ddof=1)) if ok.sum() > 1 else 0.0,
                         ci_low=ci.low, ci_high=ci.high)
        out["metrics"][c] = entry
    if all(c in metrics and "mean" in out["metrics"][c] for c in r.average_metrics) and r.average_metrics:
        out["average"] = {"of": list(r.average_metrics),
                          "mean": float(np.mean([out["metrics"][c]["mean"] for c in r.average_metrics]))}
    cats = table["prompt_index"].map(cat_of)
    out["categories"] = {
        str(cat): {c: float(np.nanmean(g[c])) if g[c].notna().any() else None for c in metrics}
        for cat, g in table.assign(_cat=cats).groupby("_cat", sort=False)
    }
    return out
