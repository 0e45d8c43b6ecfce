"""ShapesWorld's Pick-a-Pic: a foreign preference source, in the Pick-a-Pic v2 parquet schema.

The paper compares InstructEngine's data with public sources it did not make: Pick-a-Pic v2
(users' own prompts, two images per prompt, a human's choice) for Diffusion-DPO, and such prompt
lists for ReFL and the reward best/worst-of-N baseline. This module builds the same kind of source
inside ShapesWorld so that the library's Pick-a-Pic reader (``instructengine.train.sources``) and
the prompt-list path read it unchanged:

* **captions** not drawn from the taxonomy: free scene captions of the training side of the world
  (:class:`~instructengine.shapes.scene.SceneSampler`, its own seed; never a ShapesBench scene), one
  caption per "user request", with no contrast partner and no theme;
* **two images per caption** from the data pipeline's candidate generator (the imperfect renderer,
  one attribute wrong in a share ``error_rate`` of the images), so the images are as good as the
  InstructEngine candidates and only the prompts and the preference differ;
* **the preference** of a reward, not of an instruction: the scorer ``reward`` (default the tiny
  contrastive model, ShapesWorld's HPSv2 / PickScore) picks the image it scores higher;
  ``|s0 - s1| <= tie_margin`` is a tie (``label_0 = label_1 = 0.5``, which the reader drops as
  Diffusion-DPO does).

Written to ``<out_dir>/data/train-<i>-of-<n>.parquet`` with Pick-a-Pic v2's columns (``caption``,
``jpg_0`` / ``jpg_1`` as encoded PNG bytes -- lossless, the reader takes any image format --
``label_0`` / ``label_1``, uids, ``model_*``, ...) plus ``manifest.json`` (counts, label shares,
how often the reward agrees with the oracle). A finished folder with the same settings is reused.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PICKAPIC_COLUMNS", "clip_reward", "foreign_captions", "write_foreign_pickapic"]

#: Pick-a-Pic v2's columns, in its order
PICKAPIC_COLUMNS = ("are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid",
                    "image_0_url", "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0",
                    "model_1", "ranking_id", "user_id", "num_example_per_prompt")


def foreign_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct training-side scene captions drawn at random (the world's "users' prompts").

    Raises:
        ValueError: ``n`` < 1.
    """
    from instructengine.shapes.scene import SceneSampler

    if n < 1:
        raise ValueError(f"n_captions must be >= 1, got {n}")
    rng = np.random.default_rng([int(seed), 0xF0E1])
    sampler = SceneSampler(split="train", rng=rng, p_relation=0.35, p_broken=0.25)
    out: dict[str, None] = {}
    for _ in range(200 * n):
        out.setdefault(sampler.draw().caption, None)
        if len(out) == n:
            return list(out)
    raise ValueError(f"could not draw {n} distinct captions")


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_foreign_pickapic(out_dir: str | Path, n_captions: int = 1000, pairs_per_caption: int = 2, seed: int = 0,
                           error_rate: float = 0.5, reward: dict[str, Any] | None = None, tie_margin: float = 0.0,
                           shards: int = 2) -> Path:
    """Write the foreign source (see the module doc); returns ``out_dir``. Idempotent.

    Raises:
        ValueError: bad sizes, ``error_rate`` outside [0, 1], a negative ``tie_margin``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from instructengine.runs import atomic_write_json
    from instructengine.scorers.base import ScorerContext, build_scorer, score_columns
    from instructengine.scorers.spec import ScorerSpec
    from instructengine.shapes.mistakes import imperfect_scene
    from instructengine.shapes.oracle import judge
    from instructengine.shapes.render import render

    if pairs_per_caption < 1 or shards < 1:
        raise ValueError(f"pairs_per_caption ({pairs_per_caption}) and shards ({shards}) must be >= 1")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate={error_rate} must lie in [0, 1]")
    if tie_margin < 0:
        raise ValueError(f"tie_margin={tie_margin} must be >= 0")
    out = Path(out_dir)
    spec = ScorerSpec.model_validate(reward or {"kind": "shapes_clip"})
    settings = {"n_captions": n_captions, "pairs_per_caption": pairs_per_caption, "seed": seed,
                "error_rate": error_rate, "reward": spec.model_dump(mode="json"), "tie_margin": tie_margin,
                "shards": shards}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("settings") == settings:
        return out
    t0 = time.perf_counter()
    captions = foreign_captions(n_captions, seed)
    rows = [(c, p) for c in captions for p in range(pairs_per_caption)]
    base = np.random.default_rng([int(seed), 0xF0E2]).integers(0, 2**31 - 1, size=(len(rows), 2))
    images, wrong = [], []
    for (caption, _), (s0, s1) in zip(rows, base):
        pair = []
        for s in (int(s0), int(s1)):
            scene, mistake = imperfect_scene(caption, s, error_rate)
            pair.append(render(scene, s))
            wrong.append(mistake is not None)
        images.append(pair)
    scorer = build_scorer(spec.kind, spec.options, ScorerContext(device=spec.device or "cpu"))
    flat = [im for pair in images for im in pair]
    prompts = [c for c, _ in rows for _ in (0, 1)]
    columns = score_columns(scorer, flat, prompts)
    column = spec.column or next(iter(columns))
    scores = np.asarray(columns[column], dtype=np.float64).reshape(-1, 2)
    exact = np.asarray([float(judge(im, p)["exact"]) for im, p in zip(flat, prompts)]).reshape(-1, 2)
    labels = np.where(np.abs(scores[:, 0] - scores[:, 1]) <= tie_margin, 0.5,
                      (scores[:, 0] > scores[:, 1]).astype(np.float64))
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    created = dt.datetime(2023, 5, 1)
    bounds = np.linspace(0, len(rows), shards + 1).astype(int)
    files = []
    for s in range(shards):
        cols: dict[str, list] = {k: [] for k in PICKAPIC_COLUMNS}
        for r in range(bounds[s], bounds[s + 1]):
            caption = rows[r][0]
            l0 = float(labels[r])
            uid0, uid1 = f"sw{seed}-{r}-0", f"sw{seed}-{r}-1"
            cols["are_different"].append(True)
            cols["best_image_uid"].append(uid0 if l0 == 1.0 else uid1 if l0 == 0.0 else "")
            cols["caption"].append(caption)
            cols["created_at"].append(created + dt.timedelta(seconds=r))
            cols["has_label"].append(True)
            cols["image_0_uid"].append(uid0)
            cols["image_0_url"].append(f"shapesworld://{uid0}.png")
            cols["image_1_uid"].append(uid1)
            cols["image_1_url"].append(f"shapesworld://{uid1}.png")
            cols["jpg_0"].append(_png(images[r][0]))
            cols["jpg_1"].append(_png(images[r][1]))
            cols["label_0"].append(l0)
            cols["label_1"].append(1.0 - l0 if l0 != 0.5 else 0.5)
            cols["model_0"].append(f"shapes_render(error_rate={error_rate})")
            cols["model_1"].append(f"shapes_render(error_rate={error_rate})")
            cols["ranking_id"].append(r)
            cols["user_id"].append(r // pairs_per_caption)
            cols["num_example_per_prompt"].append(pairs_per_caption)
        table = pa.table({k: pa.array(v, type=pa.binary()) if k.startswith("jpg_") else v for k, v in cols.items()})
        path = out / "data" / f"train-{s:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path)
        files.append(str(path.relative_to(out)))
    decided = labels != 0.5
    differ = decided & (exact[:, 0] != exact[:, 1])
    winner_exact = np.where(labels == 1.0, exact[:, 0], exact[:, 1])
    atomic_write_json(manifest_path, {
        "settings": settings, "files": files, "rows": len(rows), "captions": len(captions),
        "ties": int((~decided).sum()), "label_0_share": float((labels[decided] == 1.0).mean()) if decided.any() else None,
        "images_with_a_mistake": float(np.mean(wrong)),
        "pairs_where_exactly_one_image_is_right": int(differ.sum()),
        "reward_agrees_with_oracle_there": float(winner_exact[differ].mean()) if differ.any() else None,
        "seconds": round(time.perf_counter() - t0, 1),
    })
    return out


def clip_reward(device: str = "cpu", path: str | None = None, scale: float = 1.0) -> Any:
    """ReFL's differentiable reward in ShapesWorld: the tiny contrastive model's cosine (it reads pixels
    in [-1, 1], hence mean = std = 0.5); ``refl.reward: instructengine.shapes.foreign:clip_reward``."""
    from instructengine.shapes.contrastive import DEFAULT_CLIP_DIR
    from instructengine.train.rewards import ClipReward

    return ClipReward(str(path or DEFAULT_CLIP_DIR), device=device, pixel_mean=(0.5, 0.5, 0.5),
                      pixel_std=(0.5, 0.5, 0.5), scale=scale)
