"""Select -> judge -> dataset -> card on ShapesWorld, and the baselines, checked against what the
trainer reads (instructengine.train.data.build_items)."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from images_helpers import copy_text_run, make_config, manifest

from instructengine.data.schema import SAMPLE_COLUMNS, load_samples
from instructengine.images.baselines import normalize_scores
from instructengine.images.candidates import read_candidates
from instructengine.images.pipeline import run_image_stages
from instructengine.shapes.oracle import judge
from instructengine.train.config import DataConfig
from instructengine.train.data import build_items

MISTAKES = {"kind": "images_helpers:make_mistake_generator", "options": {"every": 3, "flag_every": 7}}


@pytest.fixture(scope="module")
def shapes_run(shapes_text_run, tmp_path_factory):
    run = copy_text_run(shapes_text_run, tmp_path_factory.mktemp("sjd") / "run")
    cfg = make_config(
        run,
        generator=MISTAKES,
        candidates={"n_candidates": 3, "instructions_per_call": 8, "max_pairs": 60},
        baselines=[
            {"name": "oracle_bw", "scorers": [{"kind": "shapes_oracle", "column": "share"}]},
            {"name": "agfsync", "normalize": "zscore",
             "scorers": [{"kind": "shapes_oracle", "column": "share", "weight": 0.7}, {"kind": "shapes_clip", "weight": 0.3,
                                                                     "options": {"path": str(_tiny_clip(run.parent))}}]},
        ],
    )
    manifests = run_image_stages(cfg, log=lambda s: None)
    return cfg, manifests


def _exact(run: Path, rows) -> list[bool]:
    """The oracle's verdict on each candidate (a perturbed scene sometimes still matches its caption)."""
    from PIL import Image

    return [judge(np.asarray(Image.open(run / "candidates" / r.image).convert("RGB")), r.prompt)["exact"]
            for r in rows.itertuples()]


def _tiny_clip(folder: Path) -> Path:
    import torch

    from instructengine.shapes.contrastive import ContrastiveConfig, build_model

    torch.manual_seed(0)
    model, tok = build_model(ContrastiveConfig(hidden_size=16, layers=1))
    model.save_pretrained(folder / "clip")
    tok.save_pretrained(folder / "clip")
    return folder / "clip"


def test_best_of_n_keeps_a_correct_candidate_whenever_there_is_one(shapes_run):
    cfg, manifests = shapes_run
    run = Path(cfg.run_dir)
    cands = read_candidates(run)
    sel = pd.read_parquet(run / "select" / "selected.parquet")
    usable = cands[~cands["nsfw"]]
    correct = usable[_exact(run, usable)]
    has_correct = set(correct["instruction_id"])
    assert 0 < len(correct) < len(usable)
    assert manifests["select"].count_in == 120
    assert len(sel) == usable["instruction_id"].nunique() == manifests["select"].count_out
    assert manifests["select"].dropped.get("all_nsfw", 0) == 120 - usable["instruction_id"].nunique()
    for row in sel.itertuples():
        assert row.score == pytest.approx(1.0) if row.instruction_id in has_correct else row.score < 1.0
        assert row.seed % 7 != 1  # never a flagged image
    # the judge keeps exactly the selected images that are correct
    judged = pd.read_parquet(run / "judge" / "judged.parquet")
    kept = set(judged.loc[judged["keep"], "instruction_id"])
    assert kept == set(sel["instruction_id"]) & has_correct
    assert all(r.startswith("oracle:") for r in judged.loc[~judged["keep"], "reason"])
    m = manifests["judge"]
    assert m.count_out == len(kept) and sum(m.dropped.values()) == len(sel) - len(kept)


def test_dataset_schema_images_and_funnel(shapes_run):
    cfg, manifests = shapes_run
    run = Path(cfg.run_dir)
    df, root = load_samples(run / "images")
    assert list(df.columns) == list(SAMPLE_COLUMNS)
    judged = pd.read_parquet(run / "judge" / "judged.parquet").set_index("instruction_id")
    pairs = pd.read_parquet(run / "instructions" / "pairs.parquet").set_index("pair_id")
    expected = [p for p in sorted(pairs.index)[:60]
                if all(judged["keep"].get(f"{p}_{s}", False) for s in (1, 2))]
    assert sorted(df["sample_id"]) == expected and len(df) > 10
    m = manifests["dataset"]
    assert m.count_in == 60 and m.count_out == len(df) and m.count_in == m.count_out + sum(m.dropped.values())
    assert set(m.dropped) <= {f"{k}:{w}" for k in ("rejected", "not_selected") for w in ("x1", "x2", "both")}
    for row in df.itertuples():
        for side in (1, 2):
            rel = getattr(row, f"image_{side}")
            assert not Path(rel).is_absolute()
            img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(root / rel).convert("RGB"))
            assert judge(img, getattr(row, f"instruction_{side}"))["exact"]
            assert os.path.samefile(root / rel, run / "candidates" / rel)  # hard link, no copy
        assert row.entity == pairs.loc[row.sample_id, "entity"]
    assert len(list((root / "images").rglob("*.png"))) == 2 * len(df)
    # what the trainer reads: one cross-validation item per sample
    items, n_in, dropped = build_items("samples", "quad", DataConfig(path=str(root)))
    assert len(items) == len(df) == n_in and not dropped
    card = (root / "README.md").read_text()
    for stage in ("taxonomy", "entities", "instructions", "candidates", "select", "judge"):
        c = manifest(run, stage)["counts"]
        assert f"| {c['in']:,} | {c['out']:,} |" in card
    assert f"| kept samples | pairs | 60 | {len(df)} |" in card
    assert "`rejected:" in card and (root / "hist_theme.png").stat().st_size > 1000
    assert "images_helpers:make_mistake_generator" in card and "steps, guidance" not in card  # no sampler here
    assert (root / "hist_dimension.png").read_bytes()[:4] == b"\x89PNG"


def test_baselines_match_what_the_trainer_picks(shapes_run):
    cfg, manifests = shapes_run
    run = Path(cfg.run_dir)
    for name in ("oracle_bw", "agfsync"):
        folder = run / "baselines" / name
        prefs = pd.read_parquet(folder / "preferences.parquet")
        m = manifests[f"baselines/{name}"]
        assert m.count_out == len(prefs) > 0 and (prefs["reward_w"] > prefs["reward_l"]).all()
        items, _, dropped = build_items("candidates", "pair", DataConfig(path=str(folder), candidate_group_column="instruction_id"))
        picked = {(it.texts[0], Path(it.images[0]).name, Path(it.images[1]).name) for it in items}
        assert picked == {(p.prompt, Path(p.image_w).name, Path(p.image_l).name) for p in prefs.itertuples()}
        assert not dropped
    # a single exact scorer: best = a correct image, worst = a wrong one; ties are dropped
    prefs = pd.read_parquet(run / "baselines" / "oracle_bw" / "preferences.parquet")
    w = pd.DataFrame({"image": prefs["image_w"], "prompt": prefs["prompt"]})
    lo = pd.DataFrame({"image": prefs["image_l"], "prompt": prefs["prompt"]})
    assert (prefs["reward_w"] == 1.0).all() and all(_exact(run, w)) and not any(_exact(run, lo))
    assert manifests["baselines/oracle_bw"].dropped["reward_tie"] > 0
    # AGFSync: the reward is the weighted sum of z-scored scores
    table = pd.read_parquet(run / "baselines" / "agfsync" / "candidates.parquet")
    full = read_candidates(run)
    full = full[~full["nsfw"]]
    scores = json.loads((run / "baselines" / "agfsync" / "manifest.json").read_text())["extra"]
    assert scores["normalize"] == "zscore"
    assert {"score_shapes_oracle", "score_shapes_clip"} <= set(table.columns)
    # the shared score cache was reused: oracle scores were computed once for select and both baselines
    assert manifests["baselines/agfsync"].extra["score_shapes_oracle_cached_computed"] == [len(full), 0]
    assert len(list((run / "scores").glob("*.jsonl"))) == 2


def test_normalize_scores():
    v = np.array([1.0, 2.0, np.nan, 3.0])
    assert np.allclose(normalize_scores(v, "zscore")[[0, 1, 3]], [-1.2247449, 0.0, 1.2247449])
    assert np.allclose(normalize_scores(v, "minmax")[[0, 1, 3]], [0.0, 0.5, 1.0])
    assert np.isnan(normalize_scores(v, "zscore")[2])
    assert np.array_equal(normalize_scores(np.array([2.0, 2.0]), "zscore"), [0.0, 0.0])
    with pytest.raises(ValueError, match="normalize must be"):
        normalize_scores(v, "rank")


def test_rerun_repeats_no_work_and_gives_the_same_artifacts(shapes_run):
    cfg, _ = shapes_run
    run = Path(cfg.run_dir)
    files = ["select/selected.parquet", "judge/judged.parquet", "images/samples.parquet",
             "baselines/agfsync/candidates.parquet", "images/README.md", "images/hist_theme.png"]
    before = {f: (run / f).read_bytes() for f in files}
    m = run_image_stages(cfg, log=lambda s: None)
    assert m["candidates"].extra["generated_this_run"] == 0
    assert m["select"].extra["scores_computed"] == 0
    assert {f: (run / f).read_bytes() for f in files} == before


class CrashingScorer:
    """The oracle scorer, but the process 'dies' (an exception) at call ``crash_at``."""

    name = "shapes_oracle"

    def __init__(self, crash_at: int):
        from instructengine.shapes.scorers import OracleScorer

        self.inner, self.crash_at, self.calls = OracleScorer(), crash_at, 0
        self.columns = self.inner.columns

    def score(self, images, prompts):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return self.inner.score(images, prompts)


def test_select_resumes_after_a_crash_without_rescoring(shapes_run, tmp_path):
    import shutil

    from instructengine.images.select import run_select

    cfg, _ = shapes_run
    src = Path(cfg.run_dir)
    run = tmp_path / "run"
    for stage in ("instructions", "candidates"):
        shutil.copytree(src / stage, run / stage)
    crash_cfg = cfg.model_copy(update={"run_dir": str(run), "select": cfg.select.model_copy(
        update={"scorer": cfg.select.scorer.model_copy(update={"batch_size": 12})})})
    with pytest.raises(KeyboardInterrupt):
        run_select(crash_cfg, scorer=CrashingScorer(crash_at=4))
    assert not (run / "select" / "selected.parquet").exists()
    m = run_select(crash_cfg)
    assert m.extra["scores_cached"] > 0 and m.extra["scores_computed"] + m.extra["scores_cached"] == m.extra["candidates_scored"]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "select" / "selected.parquet"),
                                  pd.read_parquet(src / "select" / "selected.parquet"))


def test_card_states_what_determines_the_images():
    from instructengine.images.card import _generator_settings
    from instructengine.images.config import GeneratorConfig

    assert "error_rate" in _generator_settings(GeneratorConfig(kind="shapes_render", options={"error_rate": 0.5}))
    assert "0.5" in _generator_settings(GeneratorConfig(kind="shapes_render", options={"error_rate": 0.5}))
    text = _generator_settings(GeneratorConfig(kind="shapes_model", num_inference_steps=8, guidance_scale=3.0))
    assert "8 steps" in text and "guidance 3.0" in text
