"""Readers of the paper's data in their published formats (Pick-a-Pic v2 shards, DiffusionDB metadata,
prompt tables), the seeded nested stratified subsets, and two training steps from each reader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from instructengine.train.config import DataConfig
from instructengine.train.data import build_items
from instructengine.train.sources import nested_subset, nested_subset_frame, subset_order
from instructengine.train.trainer import run_training

from .conftest import make_config
from .paper_data import (COLOURS, DIFFUSIONDB_PROMPTS, PICKAPIC_ROWS, expected_pickapic_triples, image_bytes,
                         write_diffusiondb_metadata, write_pickapic)


@pytest.fixture(scope="module")
def pickapic(tmp_path_factory) -> Path:
    return write_pickapic(tmp_path_factory.mktemp("pickapic"))


@pytest.fixture(scope="module")
def diffusiondb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffusiondb")
    write_diffusiondb_metadata(root)
    return root


def _shard_rows(root: Path) -> list[pd.DataFrame]:
    return [pd.read_parquet(p) for p in sorted((root / "data").glob("train-*.parquet"))]


def _shows(path: str, colour: str) -> bool:
    arr = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(arr - np.array(COLOURS[colour])).sum(1) < 60).any())


# ---------------------------------------------------------------------------------------- Pick-a-Pic


def test_pickapic_triples_follow_the_labels_and_drop_ties(pickapic, tmp_path):
    cfg = DataConfig(source="pickapic", path=str(pickapic), pickapic={"image_cache": str(tmp_path / "cache")})
    items, rows, dropped = build_items("samples", "pair", cfg)
    assert rows == sum(len(s) for s in PICKAPIC_ROWS) == 11
    assert dropped == Counter({"tie (label_0 = label_1 = 0.5)": 2})
    expected = expected_pickapic_triples()
    assert len(items) == len(expected) == 9
    shards = _shard_rows(pickapic)
    for item, (caption, s, r, win) in zip(items, expected):
        lose = "jpg_1" if win == "jpg_0" else "jpg_0"
        assert item.texts == (caption,)
        # the files hold the shard's bytes unchanged: winner = the column the labels prefer
        assert Path(item.images[0]).read_bytes() == shards[s].iloc[r][win]
        assert Path(item.images[1]).read_bytes() == shards[s].iloc[r][lose]
        assert Path(item.images[0]).suffix == (".jpg" if win == "jpg_0" else ".png")
        # and (by how the fixture drew them) the winner shows the caption's colour, the loser does not
        colour = caption.split()[1]
        assert _shows(item.images[0], colour) and not _shows(item.images[1], colour)


def test_pickapic_winners_captions_and_the_cache_is_reused(pickapic, tmp_path):
    cfg = DataConfig(source="pickapic", path=str(pickapic), pickapic={"image_cache": str(tmp_path / "cache")})
    singles, _, _ = build_items("samples", "single", cfg)
    pairs, _, _ = build_items("samples", "pair", cfg)
    assert [s.images[0] for s in singles] == [p.images[0] for p in pairs]
    stamps = {p: Path(p).stat().st_mtime_ns for it in pairs for p in it.images}
    again, _, _ = build_items("samples", "pair", cfg)
    assert again == pairs and all(Path(p).stat().st_mtime_ns == t for p, t in stamps.items())
    captions, _, dropped = build_items("samples", "prompt", cfg)
    assert [c.texts[0] for c in captions] == ["a red square", "a blue square", "a green square", "a yellow square"]
    assert dropped == Counter({"repeated caption": 7}) and all(c.images == () for c in captions)
    with pytest.raises(ValueError, match="layout 'quad'.*diffusion_dpo"):
        build_items("samples", "quad", cfg)


def test_pickapic_bad_rows_are_counted_by_reason(tmp_path):
    good = image_bytes("red", "PNG")
    table = pa.table({
        "caption": ["a red square", "a red square", "a red square", None, "a red square", "a red square"],
        "jpg_0": pa.array([good, None, b"not an image", good, good, good], pa.binary()),
        "jpg_1": pa.array([good, good, good, good, good, good], pa.binary()),
        "label_0": [1.0, 1.0, 0.0, 1.0, 0.3, 1.0],
        "label_1": [0.0, 0.0, 1.0, 0.0, 0.7, 1.0],
    })
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    items, rows, dropped = build_items("samples", "pair", DataConfig(source="pickapic", path=str(tmp_path)))
    assert rows == 6 and len(items) == 1
    assert dropped == Counter({"image bytes missing": 1, "image bytes not a known image format": 1,
                               "caption not text": 1, "label_0 not 0, 0.5 or 1": 1,
                               "labels inconsistent (label_1 != 1 - label_0)": 1})
    pq.write_table(table.drop(["label_1"]), tmp_path / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match=r"missing columns \['label_1'\]"):
        build_items("samples", "pair", DataConfig(source="pickapic", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="data.pickapic.files"):
        build_items("samples", "pair", DataConfig(source="pickapic", path=str(tmp_path / "nowhere")))


# ---------------------------------------------------------------------------------------- prompt lists


def test_diffusiondb_metadata_prompts(diffusiondb):
    items, rows, dropped = build_items("samples", "prompt", DataConfig(source="prompts", path=str(diffusiondb)))
    assert rows == len(DIFFUSIONDB_PROMPTS)
    assert [i.texts[0] for i in items] == ["a red square", "a blue square, digital art", "a green square on white",
                                           "a yellow square"]
    assert dropped == Counter({"repeated prompt": 2, "prompt empty": 1})
    items, _, dropped = build_items("samples", "prompt", DataConfig(source="prompts", path=str(diffusiondb),
                                                                    prompts={"deduplicate": False}))
    assert len(items) == 6 and dropped == Counter({"prompt empty": 1})
    with pytest.raises(ValueError, match="gives prompts only"):
        build_items("samples", "pair", DataConfig(source="prompts", path=str(diffusiondb)))
    with pytest.raises(ValueError, match=r"missing columns \['text'\]"):
        build_items("samples", "prompt", DataConfig(source="prompts", path=str(diffusiondb), prompts={"column": "text"}))


def test_pickapic_captions_and_plain_files_as_prompt_lists(pickapic, tmp_path):
    cfg = DataConfig(source="prompts", path=str(pickapic),
                     prompts={"files": ["**/train-*.parquet"], "column": "caption"})
    items, rows, _ = build_items("samples", "prompt", cfg)
    by_pandas = list(dict.fromkeys(pd.concat(_shard_rows(pickapic))["caption"]))
    assert [i.texts[0] for i in items] == by_pandas and rows == 11
    (tmp_path / "p.txt").write_text("one\n\ntwo\none\n")
    pd.DataFrame({"prompt": ["three", "four"]}).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "five"}) + "\n")
    cfg = DataConfig(source="prompts", path=str(tmp_path), prompts={"files": ["p.txt", "p.csv", "p.jsonl"]})
    items, rows, dropped = build_items("samples", "prompt", cfg)
    # files in sorted path order: p.csv, p.jsonl, p.txt
    assert [i.texts[0] for i in items] == ["three", "four", "five", "one", "two"] and rows == 7
    assert dropped == Counter({"prompt empty": 1, "repeated prompt": 1})


# ---------------------------------------------------------------------------------------- subsets


def _strata(sizes: dict[tuple[str, str], int], seed: int = 0) -> list[tuple[str, str]]:
    keys = [k for k, m in sizes.items() for _ in range(m)]
    return [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]


SIZES = {("animals", "content"): 30, ("animals", "aesthetics"): 10, ("people", "content"): 17,
         ("people", "counterfactual"): 40, ("food", "aesthetics"): 3}


def test_nested_subsets_are_nested_deterministic_and_stratified():
    strata = _strata(SIZES)
    N = len(strata)
    order = subset_order(strata, seed=3)
    assert sorted(order) == list(range(N))
    prev: set[int] = set()
    for n in range(N + 1):
        sub = nested_subset(strata, n, seed=3)
        assert len(sub) == n == len(set(sub)) and sub == sorted(sub)
        assert prev <= set(sub)  # nested
        prev = set(sub)
        counts = Counter(strata[i] for i in sub)
        for key, m in SIZES.items():  # every group within one item of its proportional share
            assert abs(counts[key] - n * m / N) <= 1.0, (n, key, counts[key], n * m / N)
    assert nested_subset(strata, 20, seed=3) == nested_subset(list(strata), 20, seed=3)
    assert nested_subset(strata, 20, seed=3) != nested_subset(strata, 20, seed=4)
    assert nested_subset(strata, 10**6, seed=3) == list(range(N))
    # draws are random within a group: over seeds every member of a group is sometimes in the 10-subset
    hits = Counter(i for seed in range(200) for i in nested_subset(strata, 10, seed))
    assert len(hits) == N


def test_nested_subset_frame_on_samples(tiny_root):
    df = pd.concat([pd.read_parquet(tiny_root / "data" / "samples.parquet")] * 3, ignore_index=True)
    df["theme"] = ["a", "b", "b", "c"] * (len(df) // 4)
    small, big = nested_subset_frame(df, 6, seed=1), nested_subset_frame(df, 12, seed=1)
    assert set(small.index) <= set(big.index) and len(small) == 6 and len(big) == 12
    got = Counter(small["theme"])  # of 24 rows: a 6, b 12, c 6 -> 1.5, 3, 1.5 of 6
    assert got["b"] == 3 and {got["a"], got["c"]} <= {1, 2} and got["a"] + got["c"] == 3
    assert Counter(big["theme"]) == Counter({"a": 3, "b": 6, "c": 3})


def test_max_items_is_a_seeded_random_subset_not_the_first_n(tiny_root):
    base = {"path": str(tiny_root / "data"), "resolution": 16}
    every, _, _ = build_items("samples", "pair", DataConfig(**base))
    picks = {seed: build_items("samples", "pair", DataConfig(**base, max_items=5, subset_seed=seed)) for seed in range(4)}
    for items, _, dropped in picks.values():
        assert len(items) == 5 and dropped == Counter({"not in the max_items subset": len(every) - 5})
        assert set(items) <= set(every)
    assert any(items != every[:5] for items, _, _ in picks.values())
    assert len({tuple(items) for items, _, _ in picks.values()}) > 1
    larger, _, _ = build_items("samples", "pair", DataConfig(**base, max_items=9, subset_seed=2))
    assert set(picks[2][0]) <= set(larger)
    assert build_items("samples", "pair", DataConfig(**base, max_items=5, subset_seed=2))[0] == picks[2][0]


# ---------------------------------------------------------------------------------------- two training steps


def _metrics(result) -> list[dict]:
    return [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]


def test_diffusion_dpo_trains_on_pickapic(tiny_root, pickapic, tmp_path):
    cfg = make_config(tiny_root, tmp_path / "run", "sd15", "diffusion_dpo",
                      data__source="pickapic", data__path=str(pickapic),
                      data__pickapic={"image_cache": str(tmp_path / "cache")})
    result = run_training(cfg)
    rows = _metrics(result)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "implicit_acc_pair" in rows[0] and rows[-1]["items_seen"] == 8
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["in"] == 11 and counts["out"] == 9 and counts["dropped"] == {"tie (label_0 = label_1 = 0.5)": 2}


@pytest.mark.parametrize("source", ["diffusiondb", "pickapic_captions"])
def test_refl_trains_on_a_prompt_list(tiny_root, pickapic, diffusiondb, tmp_path, source):
    data = ({"data__source": "prompts", "data__path": str(diffusiondb)} if source == "diffusiondb" else
            {"data__source": "pickapic", "data__path": str(pickapic)})
    cfg = make_config(tiny_root, tmp_path / "run", "sd15", "refl", **data)
    result = run_training(cfg)
    rows = _metrics(result)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["reward"]) for r in rows)
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["counts"]["out"] == 4 and manifest["extra"]["layout"] == "prompt"
