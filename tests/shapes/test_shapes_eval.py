"""ShapesWorld's generator and scorers in the evaluation harness, through the registry (the bundle plugs in)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from instructengine.config import ConfigError, load_config, validate_config
from instructengine.evaluate.config import EvalConfig, ModelSpec
from instructengine.generation import build_generator
from instructengine.scorers import ScorerContext, build_scorer
from instructengine.shapes.scorers import aesthetic_score
from instructengine.shapes.render import render, render_caption
from instructengine.shapes.scene import parse_caption

CAPTIONS = ["two small red circles , vivid , clean background", "a large blue square above a small green triangle"]


def test_oracle_scorer_columns_and_values():
    scorer = build_scorer("shapes_oracle", {}, ScorerContext())
    images = [Image.fromarray(render_caption(c, 3)) for c in CAPTIONS]
    out = scorer.score(images + images, CAPTIONS + CAPTIONS[::-1])
    assert scorer.columns[0] == "exact" and out.shape == (4, len(scorer.columns))
    assert out[0, 0] == 1.0 and out[1, 0] == 1.0  # renders match their captions
    assert out[2, 0] == 0.0 and out[3, 0] == 0.0  # and not each other's
    rel = scorer.columns.index("relation")
    assert np.isnan(out[0, rel]) and out[1, rel] == 1.0  # not stated -> NaN
    share = scorer.columns.index("share")  # graded: share of the stated attributes that hold
    assert out[0, share] == 1.0 and out[1, share] == 1.0
    stated = out[2, 1:share][~np.isnan(out[2, 1:share])]
    assert 0.0 <= out[2, share] < 1.0 and out[2, share] == pytest.approx(stated.mean())
    # a prompt that is not a ShapesWorld caption is not measured: a row of NaN, not an error
    assert np.isnan(scorer.score(images[:1], ["a photo of a cat"])).all()
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        scorer.score(images, CAPTIONS[:1])


def test_aesthetic_prefers_vivid_clean_over_dull_noisy():
    scene = parse_caption("a large red circle")
    good = render(scene.with_style("vivid", "clean"), 0)
    bad = render(scene.with_style("dull", "noisy"), 0)
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert aesthetic_score(good) > 0.95
    assert aesthetic_score(bad) < 0.5
    assert aesthetic_score(blank) == pytest.approx(0.5)  # clean but no colour
    scorer = build_scorer("shapes_aesthetic", {}, ScorerContext())
    assert scorer.score([Image.fromarray(good), Image.fromarray(bad)], ["x", "y"]).tolist() == pytest.approx(
        [aesthetic_score(good), aesthetic_score(bad)])


def test_clip_scorer_ranks_the_matching_caption_higher():
    scorer = build_scorer("shapes_clip", {}, ScorerContext())
    img = Image.fromarray(render_caption(CAPTIONS[0], 1))
    s = scorer.score([img, img], [CAPTIONS[0], "four large cyan triangles"])
    assert s.shape == (2,) and s[0] > s[1]


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="unknown option.*'steps'"):
        build_generator(ModelSpec(name="m", kind="shapes_model", options={"steps": 3}))
    with pytest.raises(ValueError, match="shapes_oracle takes no options"):
        build_scorer("shapes_oracle", {"x": 1}, ScorerContext())
    with pytest.raises(FileNotFoundError, match="not a trained U-Net"):
        build_generator(ModelSpec(name="m", kind="shapes_model", unet="/nonexistent"))


def test_generator_is_seeded_and_perturbation_changes_images(tmp_path):
    import torch

    torch.set_num_threads(1)
    opts = {"num_inference_steps": 2, "guidance_scale": 3.0}
    base = build_generator(ModelSpec(name="a", kind="shapes_model", **opts))
    a = base.generate(CAPTIONS, [0, 1]).images
    b = base.generate(CAPTIONS[:1], [0]).images
    # the image depends on its (prompt, seed) only, up to float rounding that varies with the batch size
    assert a[0].shape == (32, 32, 3) and np.abs(a[0].astype(int) - b[0]).max() <= 2
    assert base.describe()["kind"] == "shapes_model" and base.describe()["sampler"] == "dpmpp"
    pert = build_generator(ModelSpec(name="b", kind="shapes_model", options={"perturb": 0.2}, **opts))
    c = pert.generate(CAPTIONS, [0, 1]).images
    assert np.abs(a[0].astype(int) - c[0]).mean() > 5
    # a U-Net folder swapped in: the perturbed U-Net saved and loaded gives its images back
    pert.pipe.unet.save_pretrained(tmp_path / "unet")
    loaded = build_generator(ModelSpec(name="c", kind="shapes_model", unet=str(tmp_path / "unet"), **opts))
    d = loaded.generate(CAPTIONS, [0, 1]).images
    assert np.array_equal(c[0], d[0]) and np.array_equal(c[1], d[1])


def test_shipped_eval_config_validates():
    cfg = load_config(EvalConfig, "configs/eval_shapes.yaml", [])
    assert [m.kind for m in cfg.models] == ["shapes_model", "shapes_model"]
    with pytest.raises(ConfigError):
        validate_config(EvalConfig, {"models": []})


def test_ablation_harness_evaluator_on_shapes(tmp_path):
    from instructengine.experiments.ablation import AblationConfig, harness_evaluator
    from instructengine.train.config import TrainConfig

    csv = tmp_path / "val.csv"
    csv.write_text("prompt,category\ntwo small red circles,counting\na large blue square,colours\n")
    cfg = validate_config(AblationConfig, {
        "name": "t", "run_dir": str(tmp_path), "train": {"model": {"kind": "shapes"}}, "arms": [{"name": "base", "method": None}],
        "evaluation": {"generator": {"kind": "shapes_model", "num_inference_steps": 2, "torch_threads": 1},
                       "scorers": ["shapes_oracle"]}, "test_prompts": str(csv)})
    tcfg = validate_config(TrainConfig, {"model": {"kind": "shapes"}})
    df = harness_evaluator(cfg, tcfg, None, "base-val", tmp_path / "run", str(csv), [3, 4])
    assert sorted(zip(df.prompt_index, df.seed)) == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert {"exact", "count", "colour"} <= set(df.columns) and df["exact"].isin([0.0, 1.0]).all()
    again = harness_evaluator(cfg, tcfg, None, "base-val", tmp_path / "run", str(csv), [3, 4])  # reused from disk
    assert again.equals(df)


def test_ablation_scores_remember_their_noise(tmp_path):
    """Scores made with shared noise are not reused for a per-prompt-noise config, and the two key the shared
    base scores apart."""
    from instructengine.experiments.ablation import AblationConfig, run_ablation

    csv = tmp_path / "test.csv"
    csv.write_text("prompt,category\ntwo small red circles,counting\na large blue square,colours\n")
    data = {
        "name": "t", "run_dir": str(tmp_path), "train": {"model": {"kind": "shapes"}}, "arms": [{"name": "base", "method": None}],
        "evaluation": {"generator": {"kind": "shapes_model", "num_inference_steps": 2, "torch_threads": 1},
                       "scorers": ["shapes_oracle"]},
        "test_prompts": str(csv), "test_seeds": [0], "main_metric": "exact", "bootstrap": 100}
    run_ablation(validate_config(AblationConfig, data))
    shared = pd.read_parquet(tmp_path / "ablation" / "t" / "scores" / "base.parquet")
    assert shared["noise"].tolist() == ["shared", "shared"]
    per_prompt = {**data, "evaluation": {**data["evaluation"], "noise": "per_prompt"}}
    with pytest.raises(ValueError, match=r"base\.parquet: cached scores were made with noise \['shared'\], "
                                         r"this config asks for 'per_prompt'; delete the file"):
        run_ablation(validate_config(AblationConfig, per_prompt))
    run_ablation(validate_config(AblationConfig, {**per_prompt, "name": "t2"}))  # not the shared base scores
    own = pd.read_parquet(tmp_path / "ablation" / "t2" / "scores" / "base.parquet")
    assert own["noise"].tolist() == ["per_prompt", "per_prompt"]
    assert len(list((tmp_path / "ablation" / "_shared_base_scores").glob("*.parquet"))) == 2
    gen = json.loads((tmp_path / "ablation" / "t2" / "eval" / "base" / "test" / "generation.json").read_text())
    assert gen["noise"] == "per_prompt"
