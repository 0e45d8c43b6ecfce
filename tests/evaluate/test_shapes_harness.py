"""ShapesWorld's generator kind and scorers in the evaluation harness (instructengine.shapes.harness)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instructengine.config import ConfigError, load_config, validate_config
from instructengine.evaluate.config import EvalConfig
from instructengine.evaluate.generation import ModelSpec, build_generator
from instructengine.evaluate.scorers import ScorerContext, build_scorer
from instructengine.shapes.harness import aesthetic_score
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
        build_generator(ModelSpec(name="m", kind="shapes", options={"steps": 3}))
    with pytest.raises(ValueError, match="shapes_oracle takes no options"):
        build_scorer("shapes_oracle", {"x": 1}, ScorerContext())
    with pytest.raises(FileNotFoundError, match="not a diffusers U-Net folder"):
        build_generator(ModelSpec(name="m", kind="shapes", options={"unet": "/nonexistent"}))


def test_generator_is_seeded_and_perturbation_changes_images(tmp_path):
    import torch

    torch.set_num_threads(1)
    opts = {"num_inference_steps": 2, "guidance_scale": 3.0}
    base = build_generator(ModelSpec(name="a", kind="shapes", options=opts))
    a = [np.asarray(im) for im in base.generate(CAPTIONS, [0, 1])]
    b = [np.asarray(im) for im in base.generate(CAPTIONS[:1], [0])]
    # the image depends on its (prompt, seed) only, up to float rounding that varies with the batch size
    assert a[0].shape == (32, 32, 3) and np.abs(a[0].astype(int) - b[0]).max() <= 2
    assert base.describe()["kind"] == "shapes" and base.describe()["num_inference_steps"] == 2
    pert = build_generator(ModelSpec(name="b", kind="shapes", options={**opts, "perturb": 0.2}))
    c = [np.asarray(im) for im in pert.generate(CAPTIONS, [0, 1])]
    assert np.abs(a[0].astype(int) - c[0]).mean() > 5
    # a U-Net folder swapped in: the perturbed U-Net saved and loaded gives its images back
    pert._gen.pipe.unet.save_pretrained(tmp_path / "unet")
    loaded = build_generator(ModelSpec(name="c", kind="shapes", options={**opts, "unet": str(tmp_path / "unet")}))
    d = [np.asarray(im) for im in loaded.generate(CAPTIONS, [0, 1])]
    assert np.array_equal(c[0], d[0]) and np.array_equal(c[1], d[1])


def test_shipped_eval_config_validates():
    cfg = load_config(EvalConfig, "configs/eval_shapes.yaml", [])
    assert [m.kind for m in cfg.models] == ["shapes", "shapes"]
    with pytest.raises(ConfigError):
        validate_config(EvalConfig, {"models": []})


def test_ablation_evaluator_through_the_harness(tmp_path):
    from instructengine.shapes.harness import ablation_evaluator
    from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR

    csv = tmp_path / "val.csv"
    csv.write_text("prompt,category\ntwo small red circles,counting\na large blue square,colours\n")
    df = ablation_evaluator(DEFAULT_MODEL_DIR, "base-val", tmp_path / "run", str(csv), [3, 4],
                            num_inference_steps=2, threads=1)
    assert sorted(zip(df.prompt_index, df.seed)) == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert {"exact", "count", "colour"} <= set(df.columns) and df["exact"].isin([0.0, 1.0]).all()
    again = ablation_evaluator(DEFAULT_MODEL_DIR, "base-val", tmp_path / "run", str(csv), [3, 4],
                               num_inference_steps=2, threads=1)  # reused from disk
    assert again.equals(df)
