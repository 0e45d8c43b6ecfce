"""The Table 1 runner and the data-efficiency runner end to end on ShapesWorld, shrunk to seconds.

The Table 1 test runs the SHIPPED config (configs/table1_shapes.yaml: its prepare steps and arms) with
tiny sizes; the data-efficiency test uses a hand-made samples table whose strata sizes are known, so
the subsets can be checked against hand-computed shares.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from instructengine.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPTS = ["two small red circles , vivid , clean background", "a large blue square above a small green triangle",
           "three small yellow triangles", "a large broken cyan circle , dull"]


def _prompt_file(path: Path) -> Path:
    pd.DataFrame({"prompt": PROMPTS, "category": ["colours", "positions", "counting", "counterfactual"]}).to_csv(
        path, index=False)
    return path


def _tiny_evaluation(cfg: dict, tmp_path: Path) -> None:
    cfg["evaluation"]["generator"]["num_inference_steps"] = 2
    cfg["evaluation"]["batch_size"] = 8
    cfg["test_prompts"] = str(_prompt_file(tmp_path / "prompts.csv"))
    cfg["test_seeds"] = [0]
    cfg["bootstrap"] = 100


def _shrink(overrides: list[str]) -> list[str]:
    return [re.sub(r"^(micro_)?batch_size=\d+$", r"\1batch_size=2", o) for o in overrides]


def _png_ok(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_foreign_source_is_read_by_the_pickapic_reader_and_prefers_by_the_reward(tmp_path):
    from instructengine.scorers import ScorerContext, build_scorer
    from instructengine.shapes.foreign import PICKAPIC_COLUMNS, write_foreign_pickapic
    from instructengine.shapes.scene import parse_caption, scene_is_heldout
    from instructengine.train.config import DataConfig
    from instructengine.train.data import build_items

    out = write_foreign_pickapic(tmp_path / "foreign", n_captions=12, pairs_per_caption=2, seed=3, tie_margin=0.01)
    shards = sorted((out / "data").glob("train-*.parquet"))
    assert [p.name for p in shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    df = pd.concat([pq.read_table(p).to_pandas() for p in shards], ignore_index=True)
    assert list(df.columns) == list(PICKAPIC_COLUMNS) and len(df) == 24 and df.caption.nunique() == 12
    assert not any(scene_is_heldout(parse_caption(c)) for c in df.caption)  # never a ShapesBench scene
    # the labels, recomputed with the contrastive scorer on the decoded images
    clip = build_scorer("shapes_clip", {}, ScorerContext())
    im0 = [Image.open(io.BytesIO(b)).convert("RGB") for b in df.jpg_0]
    im1 = [Image.open(io.BytesIO(b)).convert("RGB") for b in df.jpg_1]
    s0, s1 = clip.score(im0, list(df.caption)), clip.score(im1, list(df.caption))
    expected = np.where(np.abs(s0 - s1) <= 0.01, 0.5, (s0 > s1).astype(float))
    assert df.label_0.tolist() == expected.tolist()
    assert (df.label_1 == np.where(expected == 0.5, 0.5, 1 - expected)).all()
    ties = int((expected == 0.5).sum())
    # the library's Pick-a-Pic reader: ties dropped and counted, winners first
    items, rows, dropped = build_items("samples", "pair", DataConfig(path=str(out), source="pickapic", resolution=32))
    assert rows == 24 and len(items) == 24 - ties
    assert dropped.get("tie (label_0 = label_1 = 0.5)", 0) == ties
    kept = df[expected != 0.5].reset_index(drop=True)
    for it, row in zip(items, kept.itertuples()):
        win = row.jpg_0 if row.label_0 == 1.0 else row.jpg_1
        assert it.texts == (row.caption,) and Path(it.images[0]).read_bytes() == win
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 24 and manifest["ties"] == ties
    mtime = shards[0].stat().st_mtime_ns
    write_foreign_pickapic(tmp_path / "foreign", n_captions=12, pairs_per_caption=2, seed=3, tie_margin=0.01)
    assert shards[0].stat().st_mtime_ns == mtime  # a finished folder is reused


def test_table1_runner_end_to_end_on_the_shipped_config(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "table1_shapes.yaml").read_text())
    run = tmp_path / "run"
    cfg["run_dir"] = str(run)
    cfg["seeds"] = [0, 1]
    steps = {s["name"]: s for s in cfg["prepare"]}
    shipped = [o for o in steps["ours"]["options"]["overrides"] if not o.startswith(("run_dir=", "candidates."))]
    steps["ours"]["options"]["overrides"] = [f"run_dir={run}", "candidates.max_pairs=12", "candidates.n_candidates=2",
                                             *shipped]
    steps["foreign"]["options"].update(out_dir=str(run / "foreign"), n_captions=10)
    steps["foreign_bw"]["options"]["overrides"] = [
        f"run_dir={run / 'foreign_bw'}", "candidates.n_candidates=3",
        f"candidates.prompt_list={{path: {run / 'foreign'}, files: ['data/train-*.parquet'], column: caption}}",
        *steps["foreign_bw"]["options"]["overrides"][2:]]
    cfg["train"].update(max_steps=2, batch_size=2, micro_batch_size=2)
    cfg["train"]["data"]["path"] = str(run / "images")
    for arm in cfg["arms"]:
        arm["overrides"] = [o.replace("runs/paper_shapes", str(run)) for o in _shrink(arm.get("overrides", []))]
    _tiny_evaluation(cfg, tmp_path)
    path = tmp_path / "table1.yaml"
    path.write_text(yaml.safe_dump(cfg))

    assert main(["train", "table1", "--config", str(path)]) == 0
    root = run / "ablation" / cfg["name"]
    table = (root / "table.md").read_text()
    summary = json.loads((root / "summary.json").read_text())
    arms = [a["name"] for a in cfg["arms"]]
    assert arms == ["base", "cv_dpo_anchor", "diffusion_dpo_foreign", "reward_bw_ours", "reward_bw_foreign", "refl"]
    main_table = table.split("\n\n")[0]  # the arms' table; the data preparation table follows
    rows = [line for line in main_table.splitlines() if line.startswith("| ") and not line.startswith("| arm")]
    assert [r.split(" | ")[0][2:] for r in rows] == arms
    for arm in arms:
        s = summary["summary"][arm]["exact"]
        assert s["n"] == len(PROMPTS) * (1 if arm == "base" else 2)  # prompts x image seeds x training seeds
        lo, hi = s["ci95"]
        assert 0.0 <= lo <= s["mean"] <= hi <= 1.0
        if arm != "base":
            assert s["diff_ci95"][0] <= s["diff"] <= s["diff_ci95"][1]
            assert f"{arm}-seed1" in summary["train_seconds"]
    # each arm trained on the data it names, in the schema the library reads
    manifests = {a: json.loads((root / "train" / f"{a}-seed0" / "manifest.json").read_text()) for a in arms[1:]}
    assert manifests["diffusion_dpo_foreign"]["inputs"]["data"] == str((run / "foreign").resolve())
    assert manifests["reward_bw_foreign"]["inputs"]["data"] == str((run / "foreign_bw/baselines/reward").resolve())
    assert manifests["reward_bw_ours"]["inputs"]["data"] == str((run / "baselines/reward").resolve())
    assert manifests["cv_dpo_anchor"]["extra"]["layout"] == "quad"
    bw = pd.read_parquet(run / "foreign_bw/baselines/reward/candidates.parquet")
    foreign_captions = set(pq.read_table(run / "foreign/data", columns=["caption"]).column("caption").to_pylist())
    assert set(bw.prompt) <= foreign_captions and (bw.side == 0).all()  # the foreign prompts, no pairs
    ours = pd.read_parquet(run / "baselines/reward/candidates.parquet")
    pairs = pd.read_parquet(run / "instructions/pairs.parquet")
    assert set(ours.prompt) <= set(pairs.instruction_1) | set(pairs.instruction_2)  # the taxonomy's instructions
    prepared = json.loads((root / "prepare.json").read_text())
    assert [p["name"] for p in prepared] == ["ours", "foreign", "foreign_bw"] and "Data preparation" in table
    assert "Wall time including data preparation" in table


def _samples(root: Path) -> tuple[pd.DataFrame, Counter]:
    """24 samples in 6 (theme, dimension) strata of unequal sizes, real renders as images."""
    from instructengine.shapes.render import render_caption
    from instructengine.shapes.scene import SceneSampler

    sizes = {("circles", "content"): 8, ("circles", "aesthetics"): 4, ("squares", "content"): 3,
             ("squares", "aesthetics"): 3, ("triangles", "content"): 2, ("triangles", "counterfactual"): 4}
    sampler = SceneSampler(split="train", rng=np.random.default_rng(5))
    (root / "images").mkdir(parents=True)
    rows, seen = [], set()
    for (theme, dim), m in sizes.items():
        for _ in range(m):
            while True:
                x1, x2 = sampler.draw().caption, sampler.draw().caption
                if x1 != x2 and not {x1, x2} & seen:
                    break
            seen |= {x1, x2}
            i = len(rows)
            for k, x in ((1, x1), (2, x2)):
                Image.fromarray(render_caption(x, i * 2 + k)).save(root / "images" / f"{i}_{k}.png")
            rows.append({"sample_id": f"s{i}", "theme": theme, "subtopic": "t", "entity": "e", "dimension": dim,
                         "instruction_1": x1, "instruction_2": x2, "image_1": f"images/{i}_1.png",
                         "image_2": f"images/{i}_2.png", "seed_1": 2 * i, "seed_2": 2 * i + 1,
                         "score_1": 0.9, "score_2": 0.8})
    df = pd.DataFrame(rows)
    df.to_parquet(root / "samples.parquet", index=False)
    return df, Counter({f"{t}|{d}": m for (t, d), m in sizes.items()})


def test_data_efficiency_runner_subsets_table_and_figure(tmp_path):
    samples, strata = _samples(tmp_path / "ours")
    cfg = yaml.safe_load((CONFIGS / "data_efficiency_shapes.yaml").read_text())
    run = tmp_path / "run"
    cfg.update(run_dir=str(run), sizes=[6, 12], seeds=[0], include_all=True)
    cfg["prepare"] = [{"name": "foreign", "kind": "shapes_foreign_pickapic",
                       "options": {"out_dir": str(run / "foreign"), "n_captions": 8, "pairs_per_caption": 2}}]
    cfg["train"].update(batch_size=2, micro_batch_size=2, epochs=1, max_steps=None)
    cfg["train"]["data"]["path"] = str(tmp_path / "ours")
    for c in cfg["curves"]:
        c["overrides"] = [o.replace("runs/paper_shapes", str(run)) for o in _shrink(c["overrides"])]
    _tiny_evaluation(cfg, tmp_path)
    path = tmp_path / "de.yaml"
    path.write_text(yaml.safe_dump(cfg))

    assert main(["train", "data-efficiency", "--config", str(path)]) == 0
    root = run / "ablation" / cfg["name"]
    subsets = json.loads((root / "subsets.json").read_text())
    ours = subsets["ours"]
    assert ours["items"] == 24 and ours["strata"] == dict(strata) and list(ours["sizes"]) == ["6", "12", "24"]
    idx = {int(n): v["indices"] for n, v in ours["sizes"].items()}
    assert set(idx[6]) < set(idx[12]) < set(idx[24]) == set(range(24))  # nested
    assert len(idx[6]) == 6 and len(idx[12]) == 12
    assert idx[6] != list(range(6)) and idx[12] != list(range(12))  # not the first n rows
    key = [f"{t}|{d}" for t, d in zip(samples.theme, samples.dimension)]  # items = samples, in table order
    for n in (6, 12):
        got = Counter(key[i] for i in idx[n])
        assert got == Counter(ours["sizes"][str(n)]["strata"])
        for stratum, m in strata.items():  # each stratum in proportion to within one item
            assert abs(got.get(stratum, 0) - n * m / 24) <= 1.0, (n, stratum, got)
    # every point trained on exactly its subset for one epoch (batch 2)
    for n in (6, 12, 24):
        m = json.loads((root / "train" / f"ours-n{n}-seed0" / "manifest.json").read_text())
        assert m["counts"]["out"] == n and m["extra"]["steps"] == n // 2
    foreign = subsets["foreign"]
    assert foreign["items"] <= 16 and list(foreign["sizes"])[-1] == str(foreign["items"])
    f6 = set(foreign["sizes"]["6"]["indices"])
    assert len(f6) == 6 and f6 < set(foreign["sizes"]["12"]["indices"])
    # the figure, the points and the table
    assert _png_ok(root / "figure.png") == (720, 480)
    points = pd.read_csv(root / "points.csv")
    assert points.curve.tolist() == ["base", "ours", "ours", "ours"] + ["foreign"] * (len(points) - 4)
    assert (points.ci_low <= points["mean"]).all() and (points["mean"] <= points.ci_high).all()
    summary = json.loads((root / "summary.json").read_text())["summary"]
    row = points[(points.curve == "ours") & (points["size"] == 12)].iloc[0]
    assert row["mean"] == pytest.approx(summary["ours-n12"]["exact"]["mean"], abs=1e-6)
    assert row["diff"] == pytest.approx(summary["ours-n12"]["exact"]["mean"] - summary["base"]["exact"]["mean"],
                                        abs=1e-6)
    table = (root / "table.md").read_text()
    assert "ours-n6" in table and "foreign-n6" in table and "figure.png" in table
    # a stopped run: the figure and table of what is on disk, nothing trained or evaluated
    (root / "scores" / "foreign-n12-seed0.parquet").unlink()
    path.write_text(yaml.safe_dump({**cfg, "summarize_only": True}))
    assert main(["train", "data-efficiency", "--config", str(path)]) == 0
    assert not (root / "scores" / "foreign-n12-seed0.parquet").exists()
    partial = pd.read_csv(root / "points-partial.csv")
    assert len(partial) == len(points) - 1 and 12 not in set(partial[partial.curve == "foreign"]["size"])
    assert _png_ok(root / "figure-partial.png") == (720, 480)
    assert "no scores yet for foreign-n12-seed0" in (root / "table-partial.md").read_text()
