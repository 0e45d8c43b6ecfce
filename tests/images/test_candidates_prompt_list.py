"""A prompt list (DiffusionDB metadata here) instead of pairs.parquet: candidates -> reward best/worst
of N -> method reward_dpo, the paper's HPSv2 baseline pipeline with ShapesWorld's oracle as the reward."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from images_helpers import MistakeRenderGenerator, make_config
from PIL import Image

from instructengine.images.baselines import run_baseline
from instructengine.images.candidates import read_candidates, run_candidates
from instructengine.images.config import BaselineSpec
from instructengine.shapes.oracle import judge
from instructengine.train.config import PromptListConfig
from instructengine.train.sources import prompt_instructions, prompt_list_instructions

PROMPTS = ["a small red circle", "two small blue squares", "a large green triangle", "a small red circle",
           "", "a large blue circle", "two large red squares"]


def _diffusiondb(root):
    """DiffusionDB's metadata.parquet columns (a few rows)."""
    n = len(PROMPTS)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "image_name": [f"{i:08x}.png" for i in range(n)], "prompt": PROMPTS,
        "part_id": pa.array([1] * n, pa.uint16()), "seed": pa.array(range(n), pa.uint32()),
        "step": pa.array([50] * n, pa.uint16()), "cfg": pa.array([7.0] * n, pa.float32()),
        "sampler": ["k_lms"] * n, "width": pa.array([512] * n, pa.uint16()), "height": pa.array([512] * n, pa.uint16()),
        "user_name": ["u"] * n, "timestamp": pa.array([dt.datetime(2022, 8, 20, tzinfo=dt.timezone.utc)] * n,
                                                       pa.timestamp("us", tz="UTC")),
        "image_nsfw": pa.array([0.0] * n, pa.float32()), "prompt_nsfw": pa.array([0.0] * n, pa.float32()),
    }), root / "metadata.parquet")
    return root


def _share(path, prompt) -> float:
    verdicts = judge(np.asarray(Image.open(path).convert("RGB")), prompt)
    vals = [v for k, v in verdicts.items() if k != "exact" and v is not None]
    return float(np.mean(vals))


def test_prompt_instructions_ids_and_errors():
    ins = prompt_instructions(["b", "a", "b"])
    assert [i.prompt for i in ins] == ["b", "a"] and [i.side for i in ins] == [0, 0]
    assert prompt_instructions(["a"])[0] == ins[1]  # ids depend on the text, not on the list order
    assert all(i.id == f"{i.pair_id}_0" for i in ins)
    with pytest.raises(ValueError, match="not non-blank text"):
        prompt_instructions(["a", "  "])
    with pytest.raises(ValueError, match="empty"):
        prompt_instructions([])


def test_prompt_list_to_candidates_to_reward_best_worst_to_reward_dpo(tmp_path):
    ddb = _diffusiondb(tmp_path / "diffusiondb")
    instructions, rows, dropped = prompt_list_instructions(ddb, PromptListConfig(), n=4, seed=0)
    assert rows == 7 and dropped == Counter({"repeated prompt": 1, "prompt empty": 1, "not in the subset": 1})
    distinct = list(dict.fromkeys(p for p in PROMPTS if p))
    assert len(instructions) == 4 and [i.prompt for i in instructions] == [p for p in distinct if
                                                                          p in {i.prompt for i in instructions}]
    run = tmp_path / "run"
    cfg = make_config(run, candidates={"n_candidates": 4, "instructions_per_call": 2},
                      baselines=[{"name": "oracle_bw", "scorers": [{"kind": "shapes_oracle", "column": "share"}]}])
    gen = MistakeRenderGenerator(every=2)  # half the candidates show a changed scene
    gen.fingerprint = cfg.generator.fingerprint()
    m = run_candidates(cfg, generator=gen, instructions=instructions)
    cands = read_candidates(run)
    assert m.count_out == len(cands) == 16 and set(cands["side"]) == {0}
    assert set(cands["prompt"]) == {i.prompt for i in instructions}
    # the baseline's best/worst, recomputed with the oracle directly
    bm = run_baseline(cfg, BaselineSpec(**cfg.baselines[0].model_dump()))
    prefs = pd.read_parquet(run / "baselines" / "oracle_bw" / "preferences.parquet")
    expected = 0
    for iid, group in cands.groupby("instruction_id"):
        shares = [_share(run / "candidates" / r.image, r.prompt) for r in group.itertuples()]
        if max(shares) == min(shares):
            continue
        expected += 1
        row = prefs[prefs["instruction_id"] == iid].iloc[0]
        assert row["image_w"] == group["image"].iloc[int(np.argmax(shares))]
        assert row["image_l"] == group["image"].iloc[int(np.argmin(shares))]
        assert row["reward_w"] == pytest.approx(max(shares)) and row["reward_l"] == pytest.approx(min(shares))
    assert bm.count_out == len(prefs) == expected >= 2

    # and the reward-picked triples train (two steps, tiny SD1.5)
    from instructengine.train.config import TrainConfig
    from instructengine.train.tiny import save_model, tiny_components
    from instructengine.train.trainer import run_training

    save_model("sd15", tiny_components("sd15"), tmp_path / "sd15")
    tcfg = TrainConfig.model_validate({
        "method": "reward_dpo", "run_dir": str(tmp_path / "train"), "model": {"kind": "sd15", "path": str(tmp_path / "sd15")},
        "data": {"path": str(run / "baselines" / "oracle_bw"), "resolution": 16, "candidate_group_column": "instruction_id"},
        "batch_size": 2, "micro_batch_size": 1, "max_steps": 2, "device": "cpu", "tensorboard": False,
        "checkpoint": {"resume": "never"}})
    result = run_training(tcfg)
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_prompt_list_from_the_config_through_the_cli(tmp_path):
    """`candidates.prompt_list` makes any prompt list the candidates stage's input without Python:
    `instructengine images candidates` then `images baselines` (reward best/worst) on the same overrides."""
    import json

    from instructengine.cli import main

    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    run = tmp_path / "run"
    common = ["--config", "configs/data_shapes.yaml", f"run_dir={run}", "candidates.n_candidates=3",
              f"candidates.prompt_list={{path: {tmp_path / 'list'}, files: [prompts.txt], max_prompts: 4, subset_seed: 1}}",
              "baselines=[{name: oracle_bw, scorers: [{kind: shapes_oracle, column: share}]}]"]
    assert main(["images", "candidates", *common]) == 0
    cands = read_candidates(run)
    chosen, _, dropped = prompt_list_instructions(tmp_path / "list", PromptListConfig(files=["prompts.txt"]), n=4, seed=1)
    assert sorted(set(cands["prompt"])) == sorted(i.prompt for i in chosen) and len(cands) == 4 * 3
    assert (cands["side"] == 0).all() and not (run / "instructions").exists()  # no pairs.parquet was read
    manifest = json.loads((run / "candidates" / "manifest.json").read_text())
    assert manifest["inputs"]["prompt_list"]["max_prompts"] == 4 and "pairs" not in manifest["inputs"]
    assert main(["images", "baselines", *common]) == 0
    prefs = pd.read_parquet(run / "baselines" / "oracle_bw" / "preferences.parquet")
    assert set(prefs["prompt"]) <= set(cands["prompt"]) and (prefs["reward_w"] > prefs["reward_l"]).all()
