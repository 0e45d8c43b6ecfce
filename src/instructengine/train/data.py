"""Training items from the preference-sample table (or a candidates table), image loading, batching.

An *item* is what one row of a micro-batch holds: a tuple of instruction texts and a tuple of image
paths, whose meaning is given by the loss layout (``losses.LAYOUTS``):

* ``quad``   -- one cross-validation sample: texts (x1, x2), images (y1, y2);
* ``pair``   -- one triple: texts (x,), images (y_w, y_l). From a sample: (x1; y1, y2) and (x2; y2, y1);
* ``single`` -- texts (x,), images (y,). From a sample: (x1; y1) and (x2; y2);
* ``prompt`` -- texts (x,), no image (ReFL): the distinct instructions.

Candidates table (the reward-picked baseline, ``reward_dpo``): a parquet file in the dataset folder
(default ``candidates.parquet``) with one row per generated image and at least the columns
``prompt`` (text), ``image`` (path relative to the folder) and ``reward`` (float, higher is better);
the column names are configurable. Rows are grouped by ``prompt`` (or ``candidate_group_column``);
per group the best and the worst image by reward form one triple. Groups with fewer than two usable
images and groups whose best and worst rewards tie are dropped and counted by reason.

Other sources (``data.source``; readers in :mod:`instructengine.train.sources`): Pick-a-Pic v2
shards (triples, winners or captions) and prompt lists (DiffusionDB metadata, Pick-a-Pic captions,
any table). ``data.max_items`` keeps a seeded, stratified, nested random subset.

Order and position: each epoch's order is a permutation seeded by (seed, epoch); a process takes
its shard of it; the data position is (epoch, micro-batches consumed), so a resumed run continues
with exactly the micro-batch that would have come next. Random crops/flips are seeded per
(seed, epoch, item), so they do not depend on worker scheduling either.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "BatchStream",
    "Item",
    "ItemDataset",
    "build_items",
    "collate_items",
    "epoch_order",
    "load_image",
]


@dataclass(frozen=True)
class Item:
    texts: tuple[str, ...]
    images: tuple[str, ...]  # absolute paths


def _check_file(root: Path, rel: Any, counts: Counter) -> str | None:
    if not isinstance(rel, str) or not rel:
        counts["image path empty or not text"] += 1
        return None
    p = Path(rel) if Path(rel).is_absolute() else root / rel
    if not p.is_file():
        counts["image file missing"] += 1
        return None
    return str(p)


def _items_from_samples(root: Path, layout: str, counts: Counter,
                        dimensions: list[str] | None = None) -> tuple[list[Item], int, list[Any]]:
    from instructengine.data.schema import load_samples

    df, root = load_samples(root)
    n_rows = len(df)
    if dimensions is not None:
        keep = df["dimension"].isin(dimensions)
        if (~keep).any():
            counts["dimension not selected"] += int((~keep).sum())
        df = df[keep]
    items: list[Item] = []
    strata: list[Any] = []  # (theme, dimension) of each item's sample, for stratified subsets
    for row in df.itertuples(index=False):
        x1, x2 = str(row.instruction_1), str(row.instruction_2)
        key = (getattr(row, "theme", None), getattr(row, "dimension", None))
        if layout == "prompt":
            items.extend([Item((x1,), ()), Item((x2,), ())])
            strata.extend([key, key])
            continue
        if x1.strip() == x2.strip():
            counts["identical instructions"] += 1  # the cross-validation terms would cancel
            continue
        if row.image_1 == row.image_2:
            counts["identical images"] += 1
            continue
        y1, y2 = _check_file(root, row.image_1, counts), _check_file(root, row.image_2, counts)
        if y1 is None or y2 is None:
            continue
        if layout == "quad":
            items.append(Item((x1, x2), (y1, y2)))
        elif layout == "pair":
            items.extend([Item((x1,), (y1, y2)), Item((x2,), (y2, y1))])
        elif layout == "single":
            items.extend([Item((x1,), (y1,)), Item((x2,), (y2,))])
        else:
            raise ValueError(f"layout {layout!r} cannot be built from samples; expected quad, pair, single or prompt")
        strata.extend([key] * (len(items) - len(strata)))
    if layout == "prompt":  # distinct instructions, first-seen order
        first: dict[tuple[str, ...], int] = {}
        for i, it in enumerate(items):
            first.setdefault(it.texts, i)
        keep = sorted(first.values())
        items, strata = [items[i] for i in keep], [strata[i] for i in keep]
    return items, n_rows, strata


def _items_from_candidates(root: Path, data_cfg: Any, layout: str, counts: Counter) -> tuple[list[Item], int]:
    import pandas as pd

    path = root / data_cfg.candidates_file
    if not path.is_file():
        raise FileNotFoundError(
            f"no candidates table at {str(path)!r}; methods with source 'candidates' need a parquet with columns "
            f"{data_cfg.candidate_prompt_column!r}, {data_cfg.candidate_image_column!r}, {data_cfg.candidate_reward_column!r}"
        )
    df = pd.read_parquet(path)
    cols = {data_cfg.candidate_group_column, data_cfg.candidate_prompt_column, data_cfg.candidate_image_column,
            data_cfg.candidate_reward_column}
    missing = sorted(c for c in cols if c not in df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; present: {list(df.columns)} (see data.candidate_* settings)")
    if len(df) and df[data_cfg.candidate_reward_column].dtype.kind not in "iuf":
        raise ValueError(f"{path}: reward column {data_cfg.candidate_reward_column!r} must be numeric")
    items: list[Item] = []
    for _, group in df.groupby(data_cfg.candidate_group_column, sort=False):
        prompt = str(group[data_cfg.candidate_prompt_column].iloc[0])
        if layout == "prompt":
            items.append(Item((prompt,), ()))
            continue
        rows = []
        for rel, reward in zip(group[data_cfg.candidate_image_column], group[data_cfg.candidate_reward_column]):
            p = _check_file(root, rel, counts)
            if p is not None and np.isfinite(reward):
                rows.append((float(reward), p))
            elif p is not None:
                counts["reward not finite"] += 1
        if len(rows) < 2:
            counts["prompt with fewer than 2 usable candidates"] += 1
            continue
        best = max(rows, key=lambda r: r[0])
        worst = min(rows, key=lambda r: r[0])
        if best[0] == worst[0]:
            counts["best and worst rewards tie"] += 1
            continue
        if layout == "pair":
            items.append(Item((prompt,), (best[1], worst[1])))
        elif layout == "single":
            items.append(Item((prompt,), (best[1],)))
        else:
            raise ValueError(f"layout {layout!r} cannot be built from candidates; expected pair, single or prompt")
    return items, len(df)


#: data.source -> reader(data_cfg, layout, counts) -> SourceRead ("method": the method's own source)
def _read_samples(data_cfg: Any, layout: str, counts: Counter) -> Any:
    from instructengine.train.sources import SourceRead

    items, n_in, strata = _items_from_samples(Path(data_cfg.path), layout, counts, getattr(data_cfg, "dimensions", None))
    return SourceRead(items, strata, n_in)


def _read_candidates(data_cfg: Any, layout: str, counts: Counter) -> Any:
    from instructengine.train.sources import SourceRead

    items, n_in = _items_from_candidates(Path(data_cfg.path), data_cfg, layout, counts)
    return SourceRead(items, None, n_in)


def _readers() -> dict[str, Any]:
    from instructengine.train.sources import read_pickapic, read_prompt_list

    return {"samples": _read_samples, "candidates": _read_candidates, "pickapic": read_pickapic,
            "prompts": read_prompt_list}


def build_items(source: str, layout: str, data_cfg: Any) -> tuple[list[Item], int, Counter]:
    """Read the dataset and return (items, rows read, dropped-by-reason counts).

    ``source`` is the method's default source; ``data_cfg.source`` (unless 'method') overrides it.
    ``data_cfg.max_items`` keeps a seeded random subset (:func:`instructengine.train.sources.nested_subset`,
    stratified by (theme, dimension) for samples); items beyond it are counted as ``not in the
    max_items subset``.

    Raises:
        FileNotFoundError / ValueError: missing table, bad columns, a source that cannot give this
            layout, or no usable item at all.
    """
    from instructengine.train.sources import nested_subset

    root = Path(data_cfg.path)
    counts: Counter = Counter()
    chosen = getattr(data_cfg, "source", "method")
    source = source if chosen in (None, "method") else chosen
    dimensions = getattr(data_cfg, "dimensions", None)
    if source != "samples" and dimensions is not None:
        raise ValueError(f"data.dimensions filters preference samples; source {source!r} has no contrast dimension "
                         "(set data.dimensions: null)")
    readers = _readers()
    if source not in readers:
        raise ValueError(f"unknown data source {source!r}; expected one of {sorted(readers)}")
    read = readers[source](data_cfg, layout, counts)
    items, n_in = read.items, read.rows
    if data_cfg.max_items is not None and data_cfg.max_items < len(items):
        keep = nested_subset(read.strata if read.strata is not None else len(items), data_cfg.max_items,
                             getattr(data_cfg, "subset_seed", 0))
        counts["not in the max_items subset"] += len(items) - len(keep)
        items = [items[i] for i in keep]
    if read.materialise is not None:
        items = read.materialise(items, counts)
    if not items:
        raise ValueError(
            f"no usable training item in {str(root)!r} (rows read: {n_in}; dropped: {dict(counts) or 'none'})"
        )
    return items, n_in, counts


def load_image(
    path: str, resolution: int, center_crop: bool = True, flip: bool = False, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an image as a (3, R, R) float tensor in [-1, 1] plus SDXL micro-conditioning.

    The shorter side is resized to R (bicubic), then cropped square (centre, or random with ``rng``),
    then optionally flipped. Returns ``(pixels, micro)`` with ``micro = [orig_h, orig_w, crop_top,
    crop_left, R, R]`` as float32 (the SDXL ``time_ids`` of this image).
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        orig_w, orig_h = im.size
        scale = resolution / min(orig_w, orig_h)
        if (orig_w, orig_h) != (resolution, resolution) and scale != 1.0:
            im = im.resize((max(resolution, round(orig_w * scale)), max(resolution, round(orig_h * scale))),
                           Image.Resampling.BICUBIC)
        w, h = im.size
        if center_crop or rng is None:
            top, left = (h - resolution) // 2, (w - resolution) // 2
        else:
            top = int(rng.integers(0, h - resolution + 1))
            left = int(rng.integers(0, w - resolution + 1))
        im = im.crop((left, top, left + resolution, top + resolution))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            left = w - left - resolution
        arr = np.asarray(im, dtype=np.float32)
    pixels = torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0
    micro = torch.tensor([orig_h, orig_w, top, left, resolution, resolution], dtype=torch.float32)
    return pixels, micro


class ItemDataset(torch.utils.data.Dataset):
    """Items -> dicts with texts, image paths, and (unless ``load_pixels`` is False) pixels + micro-cond.

    Indexed by ``(item_index, epoch)`` so random crops/flips are seeded per (seed, epoch, item).
    """

    def __init__(self, items: list[Item], data_cfg: Any, seed: int, load_pixels: bool = True):
        self.items = items
        self.cfg = data_cfg
        self.seed = seed
        self.load_pixels = load_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        item = self.items[index]
        out: dict[str, Any] = {"texts": item.texts, "images": item.images}
        if self.load_pixels and item.images:
            rng = np.random.default_rng([self.seed, epoch, index])
            pix, micro = [], []
            for path in item.images:
                flip = bool(self.cfg.random_flip and rng.random() < 0.5)
                p, m = load_image(path, self.cfg.resolution, self.cfg.center_crop, flip, rng)
                pix.append(p)
                micro.append(m)
            out["pixels"], out["micro"] = pix, micro
        return out


def collate_items(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per slot: ``texts[j]`` list of B strings, ``images[k]`` list of B paths, ``pixels[k]`` (B,3,R,R)."""
    out: dict[str, Any] = {
        "texts": [list(t) for t in zip(*(r["texts"] for r in rows))],
        "images": [list(t) for t in zip(*(r["images"] for r in rows))],
    }
    if rows and "pixels" in rows[0]:
        out["pixels"] = [torch.stack(t) for t in zip(*(r["pixels"] for r in rows))]
        out["micro"] = [torch.stack(t) for t in zip(*(r["micro"] for r in rows))]
    return out


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This process's item order for an epoch: a seeded permutation, sharded evenly across processes."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    perm = torch.randperm(num_items, generator=g).tolist()
    per = num_items // world
    return perm[rank::world][:per]


class BatchStream:
    """Endless stream of micro-batches over epochs with a resumable position (epoch, batch index).

    ``state_dict()``/``load_state_dict()`` give and restore the position; iteration after a restore
    yields exactly the micro-batches an uninterrupted run would have yielded next.
    """

    def __init__(self, dataset: ItemDataset, micro_batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 num_workers: int = 0):
        self.dataset = dataset
        self.micro = micro_batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.num_workers = num_workers
        self.epoch = 0
        self.batch = 0  # micro-batches consumed in the current epoch
        self.batches_per_epoch = (len(dataset) // world) // micro_batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training items cannot fill one micro-batch of {micro_batch_size} per process "
                f"({world} process(es)); lower micro_batch_size or add data"
            )
        self._iter: Iterator[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._iter = None

    def _start(self) -> None:
        order = epoch_order(len(self.dataset), self.seed, self.epoch, self.rank, self.world)
        keys = [(i, self.epoch) for i in order]
        batches = [keys[b * self.micro:(b + 1) * self.micro] for b in range(self.batch, self.batches_per_epoch)]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, collate_fn=collate_items, num_workers=self.num_workers
        )
        self._iter = iter(loader)

    def next(self) -> dict[str, Any]:
        if self.batch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch = 0
            self._iter = None
        if self._iter is None:
            self._start()
        batch = next(self._iter)
        self.batch += 1
        return batch
