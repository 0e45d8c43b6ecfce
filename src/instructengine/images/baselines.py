"""Baseline data builders from the same candidates: best/worst of N by a reward.

* the paper's HPSv2 baseline: one scorer (``hpsv2``), reward = its score;
* AGFSync's weighted multi-score: several scorers, reward = ``sum_i w_i * normalize(scale_i * s_i)``.
  ``preset: agfsync_paper`` is the paper's raw sum 0.35 VQA + 0.55 CLIP + 0.10 VILA on 0-100
  scales; ``preset: agfsync_code`` is what the released code computes (0.85 CLIP + 0.15 VILA, x100,
  CLIP on prompt[0:77], summed in float16); see ``BASELINE_PRESETS`` in
  :mod:`instructengine.images.config`. ``normalize: zscore`` / ``minmax`` are ours (zscore makes
  each weight w/sigma, so it picks other pairs than AGFSync's raw sum).

Per baseline ``<name>``, ``<run_dir>/baselines/<name>/`` holds (the trainer's ``data.path`` for
its ``reward_dpo`` method, see ``instructengine.train.data``):

* ``candidates.parquet`` - one row per usable candidate of every instruction that yields a pair:
  ``prompt``, ``image`` (relative to this folder), ``reward`` (higher is better), plus
  ``instruction_id``, ``pair_id``, ``side``, ``k``, ``seed`` and ``score_<scorer>`` per scorer.
  The trainer groups rows by ``prompt`` by default; set ``data.candidate_group_column:
  instruction_id`` to group exactly by instruction (two pairs can share an instruction text);
* ``preferences.parquet`` - the chosen pair per instruction: ``prompt``, ``image_w``, ``image_l``,
  ``reward_w``, ``reward_l`` (+ ids); the same pick the trainer makes (max / min reward, first on ties);
* ``images/..`` - hard links to the candidate PNGs;
* ``manifest.json`` - counts are instructions; drops: ``fewer_than_2_candidates`` (after NSFW /
  unmeasured scores), ``reward_tie`` (best - worst <= min_gap); ``extra.candidates_unmeasured``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from instructengine.images.candidates import read_candidates
from instructengine.images.config import BaselineSpec, DataPipelineConfig
from instructengine.images.files import link_or_copy
from instructengine.images.scorers import score_candidates
from instructengine.images.select import generator_fingerprint
from instructengine.runs import Manifest, StageDir, atomic_write_parquet

__all__ = ["normalize_scores", "run_baseline", "run_baselines", "weighted_reward"]


def normalize_scores(values: np.ndarray, how: str) -> np.ndarray:
    """Normalise over the finite values (NaN stays NaN): none, zscore or minmax."""
    finite = values[np.isfinite(values)]
    if how == "none" or len(finite) == 0:
        return values.astype(np.float64)
    if how == "zscore":
        std = finite.std()
        return (values - finite.mean()) / (std if std > 0 else 1.0)
    if how == "minmax":
        span = finite.max() - finite.min()
        return (values - finite.min()) / (span if span > 0 else 1.0)
    raise ValueError(f"normalize must be none, zscore or minmax, got {how!r}")


def weighted_reward(terms: list[tuple[float, np.ndarray]], dtype: str, n: int) -> np.ndarray:
    """``sum_i weight_i * values_i`` (NaN stays NaN), as float64.

    ``dtype="float16"`` repeats the released AGFSync code's arithmetic: each term's values are
    cast to float16 and ``reward += weight * values`` runs in float16 (a Python float times a
    float16 array stays float16 in numpy), so candidates closer than float16's spacing tie.
    """
    if dtype == "float64":
        reward = np.zeros(n)
        for weight, values in terms:
            reward = reward + weight * values
        return reward
    if dtype == "float16":
        reward16 = np.zeros(n, dtype=np.float16)
        for weight, values in terms:
            reward16 += weight * values.astype(np.float16)
        return reward16.astype(np.float64)
    raise ValueError(f"reward_dtype must be float64 or float16, got {dtype!r}")


def _column_name(spec: Any, taken: set[str]) -> str:
    base = "score_" + "".join(c if c.isalnum() else "_" for c in spec.label).strip("_")
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def run_baseline(
    cfg: DataPipelineConfig,
    spec: BaselineSpec,
    scorers: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Manifest:
    """Build one baseline folder; ``scorers`` maps a scorer name to a ready scorer object."""
    import pandas as pd

    run_dir = Path(cfg.run_dir)
    stage = StageDir(run_dir, f"baselines/{spec.name}")
    manifest = stage.new_manifest(spec)
    cands = read_candidates(run_dir)
    manifest.inputs["candidates"] = str(run_dir / "candidates" / "candidates.parquet")
    usable = cands[~cands["nsfw"]].reset_index(drop=True)
    gen_fp = generator_fingerprint(run_dir)
    terms = []
    taken: set[str] = set()
    columns = {}
    for s in spec.scorers:
        rows = usable if s.prompt_chars is None else usable.assign(prompt=usable["prompt"].str[: s.prompt_chars])
        with manifest.timed(f"score_{s.label}"):
            values, stats = score_candidates(run_dir, s, rows, gen_fp, (scorers or {}).get(s.label), log)
        col = _column_name(s, taken)
        columns[col] = values
        manifest.extra[f"{col}_cached_computed"] = [stats["cached"], stats["computed"]]
        terms.append((s.weight, normalize_scores(s.scale * values, spec.normalize)))
    reward = weighted_reward(terms, spec.reward_dtype, len(usable))
    usable = usable.assign(**columns, reward=reward)
    measured = usable[np.isfinite(usable["reward"].to_numpy())]
    manifest.extra["candidates_unmeasured"] = int(len(usable) - len(measured))
    keep_rows, prefs = [], []
    groups = {iid: g for iid, g in measured.groupby("instruction_id", sort=False)}
    for iid in dict.fromkeys(cands["instruction_id"]):
        manifest.count_in += 1
        g = groups.get(iid)
        if g is None or len(g) < 2:
            manifest.drop("fewer_than_2_candidates")
            continue
        g = g.sort_values("k", kind="stable")  # ties go to the first candidate, as in AGFSync's argmax
        r = g["reward"].to_numpy()
        best, worst = int(np.argmax(r)), int(np.argmin(r))
        if r[best] - r[worst] <= spec.min_gap:
            manifest.drop("reward_tie")
            continue
        keep_rows.append(g)
        w, lo = g.iloc[best], g.iloc[worst]
        prefs.append({"instruction_id": iid, "pair_id": w["pair_id"], "side": int(w["side"]), "prompt": w["prompt"],
                      "image_w": w["image"], "image_l": lo["image"], "reward_w": float(r[best]),
                      "reward_l": float(r[worst]), "seed_w": int(w["seed"]), "seed_l": int(lo["seed"])})
    out_cols = ["prompt", "image", "reward", "instruction_id", "pair_id", "side", "k", "seed", *columns]
    table = pd.concat(keep_rows)[out_cols] if keep_rows else pd.DataFrame(columns=out_cols)
    for rel in table["image"]:
        link_or_copy(run_dir / "candidates" / rel, stage.path(rel), cfg.dataset.link)
    manifest.outputs["candidates"] = str(atomic_write_parquet(stage.path("candidates.parquet"), table.reset_index(drop=True)))
    pref_table = pd.DataFrame(prefs, columns=["instruction_id", "pair_id", "side", "prompt", "image_w", "image_l",
                                               "reward_w", "reward_l", "seed_w", "seed_l"])
    manifest.outputs["preferences"] = str(atomic_write_parquet(stage.path("preferences.parquet"), pref_table))
    manifest.count_out = len(pref_table)
    manifest.extra.update(
        preset=spec.preset,
        scorers=[{"kind": s.kind, "name": s.label, "weight": s.weight, "scale": s.scale, "prompt_chars": s.prompt_chars,
                  "fingerprint": s.fingerprint()} for s in spec.scorers],
        normalize=spec.normalize,
        reward_dtype=spec.reward_dtype,
        candidate_rows=len(table),
        mean_reward_gap=round(float((pref_table["reward_w"] - pref_table["reward_l"]).mean()), 6) if len(pref_table) else None,
    )
    stage.write_manifest(manifest)
    log(f"[baselines] {spec.name}: {len(pref_table)} best/worst pairs -> {stage.root}")
    return manifest


def run_baselines(
    cfg: DataPipelineConfig, scorers: dict[str, Any] | None = None, log: Callable[[str], None] = lambda s: None
) -> dict[str, Manifest]:
    """Every baseline of ``cfg.baselines``; ``{}`` when none is configured."""
    return {spec.name: run_baseline(cfg, spec, scorers, log) for spec in cfg.baselines}
