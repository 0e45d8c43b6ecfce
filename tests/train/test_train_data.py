"""Training items from the sample/candidates tables, image loading, resumable batch order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from instructengine.train.config import DataConfig
from instructengine.train.data import BatchStream, ItemDataset, build_items, epoch_order, load_image
from instructengine.train.tiny import write_candidates, write_samples


@pytest.fixture()
def samples(tmp_path: Path) -> Path:
    return write_samples(tmp_path / "ds", n=6, size=16)


def test_layouts_from_samples(samples: Path):
    cfg = DataConfig(path=str(samples), resolution=16)
    df = pd.read_parquet(samples / "samples.parquet")
    quad, n_in, dropped = build_items("samples", "quad", cfg)
    assert n_in == 6 and len(quad) == 6 and not dropped
    r = df.iloc[0]
    assert quad[0].texts == (r.instruction_1, r.instruction_2)
    assert quad[0].images == (str(samples / r.image_1), str(samples / r.image_2))
    pair, _, _ = build_items("samples", "pair", cfg)
    assert [p.texts for p in pair[:2]] == [(r.instruction_1,), (r.instruction_2,)]
    assert pair[1].images == (str(samples / r.image_2), str(samples / r.image_1))  # under x2, y2 wins
    single, _, _ = build_items("samples", "single", cfg)
    assert len(single) == 12 and single[1].images == (str(samples / r.image_2),)
    prompts, _, _ = build_items("samples", "prompt", cfg)
    assert len(prompts) == len(set(df.instruction_1) | set(df.instruction_2))


def test_bad_samples_are_counted_by_reason(samples: Path):
    df = pd.read_parquet(samples / "samples.parquet")
    df.loc[0, "instruction_2"] = df.loc[0, "instruction_1"]
    df.loc[1, "image_2"] = df.loc[1, "image_1"]
    df.loc[2, "image_1"] = "images/missing.png"
    df.to_parquet(samples / "samples.parquet", index=False)
    items, n_in, dropped = build_items("samples", "quad", DataConfig(path=str(samples)))
    assert n_in == 6 and len(items) == 3
    assert dropped == {"identical instructions": 1, "identical images": 1, "image file missing": 1}


def test_dimensions_filter_keeps_the_chosen_contrasts_and_counts_the_rest(samples: Path):
    from pydantic import ValidationError

    df = pd.read_parquet(samples / "samples.parquet")
    df["dimension"] = ["content", "counterfactual", "aesthetics"] * 2
    df.to_parquet(samples / "samples.parquet", index=False)
    items, n_in, dropped = build_items("samples", "quad", DataConfig(path=str(samples), dimensions=["content", "aesthetics"]))
    kept = df[df.dimension != "counterfactual"]
    assert n_in == 6 and [it.texts for it in items] == list(zip(kept.instruction_1, kept.instruction_2))
    assert dropped == {"dimension not selected": 2}
    with pytest.raises(ValidationError, match=r"unknown dimension\(s\) \['colour'\]"):
        DataConfig(path=str(samples), dimensions=["colour"])
    with pytest.raises(ValueError, match="no usable training item.*dimension not selected"):
        df.assign(dimension="content").to_parquet(samples / "samples.parquet", index=False)
        build_items("samples", "quad", DataConfig(path=str(samples), dimensions=["aesthetics"]))
    root = write_candidates(samples.parent / "c", prompts=2, per_prompt=2)
    with pytest.raises(ValueError, match="data.dimensions filters preference samples"):
        build_items("candidates", "pair", DataConfig(path=str(root), dimensions=["content"]))


def test_candidates_best_and_worst(tmp_path: Path):
    root = write_candidates(tmp_path / "c", prompts=3, per_prompt=3)
    df = pd.read_parquet(root / "candidates.parquet")
    df.loc[df.prompt == df.prompt.iloc[3], "reward"] = 0.5  # prompt 2: all tied
    df = df[~((df.prompt == df.prompt.iloc[6]) & (df.seed > 0))]  # prompt 3: a single candidate
    df.to_parquet(root / "candidates.parquet", index=False)
    items, n_in, dropped = build_items("candidates", "pair", DataConfig(path=str(root)))
    assert len(items) == 1 and n_in == len(df)
    assert dropped == {"best and worst rewards tie": 1, "prompt with fewer than 2 usable candidates": 1}
    g = df[df.prompt == items[0].texts[0]]
    assert items[0].images == (str(root / g.loc[g.reward.idxmax(), "image"]), str(root / g.loc[g.reward.idxmin(), "image"]))
    with pytest.raises(ValueError, match="missing columns"):
        build_items("candidates", "pair", DataConfig(path=str(root), candidate_reward_column="score"))


def test_no_usable_item_is_an_error(tmp_path: Path):
    root = write_samples(tmp_path / "ds", n=2)
    for png in (root / "images").glob("*.png"):
        png.unlink()
    with pytest.raises(ValueError, match="no usable training item.*image file missing"):
        build_items("samples", "quad", DataConfig(path=str(root)))


def test_load_image_resizes_crops_and_reports_micro_conditioning(tmp_path: Path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    Image.fromarray(arr).save(tmp_path / "wide.png")
    pix, micro = load_image(str(tmp_path / "wide.png"), 10, center_crop=True)
    assert pix.shape == (3, 10, 10) and pix.min() >= -1 and pix.max() <= 1
    assert micro.tolist() == [20, 40, 0, 5, 10, 10]  # resized to 10x20, centre crop starts at x=5
    flipped, micro_f = load_image(str(tmp_path / "wide.png"), 10, center_crop=True, flip=True)
    assert micro_f.tolist() == [20, 40, 0, 5, 10, 10]
    assert pix[0, 0, 0] > 0.9 and flipped[0, 0, -1] > 0.9  # white moved to the right edge


def test_epoch_order_shards_are_disjoint_and_seeded():
    a = epoch_order(10, seed=1, epoch=0, rank=0, world=2)
    b = epoch_order(10, seed=1, epoch=0, rank=1, world=2)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)


def test_batch_stream_resumes_at_the_same_batch(samples: Path):
    cfg = DataConfig(path=str(samples), resolution=16, center_crop=False, random_flip=True)
    items, _, _ = build_items("samples", "pair", cfg)
    ds = ItemDataset(items, cfg, seed=3)
    full = BatchStream(ds, micro_batch_size=5, seed=3)
    seq = [full.next() for _ in range(7)]  # 12 items -> 2 batches per epoch: crosses 3 epochs
    assert full.epoch == 3
    part = BatchStream(ds, micro_batch_size=5, seed=3)
    for _ in range(3):
        part.next()
    state = part.state_dict()
    resumed = BatchStream(ds, micro_batch_size=5, seed=3)
    resumed.load_state_dict(state)
    for expected in seq[3:]:
        got = resumed.next()
        assert got["texts"] == expected["texts"]
        for a, b in zip(got["pixels"], expected["pixels"]):
            assert (a == b).all()
        for a, b in zip(got["micro"], expected["micro"]):
            assert (a == b).all()
