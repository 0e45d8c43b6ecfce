"""The oracle: agreement with renders, rejection of noise and blank images, per-attribute verdicts."""

import numpy as np

from instructengine.shapes.measure import oracle_checks
from instructengine.shapes.oracle import judge
from instructengine.shapes.render import render_caption


def test_oracle_agrees_with_2000_renders_and_rejects_noise_and_blank():
    m = oracle_checks(n=2000, seed=0)
    assert m["agreement_on_renders"] >= 0.99
    assert m["accepts_uniform_noise"] <= 0.01
    assert m["accepts_blank"] <= 0.01
    assert m["accepts_render_with_other_caption"] <= 0.05


def test_per_attribute_verdicts_on_a_wrong_caption():
    img = render_caption("two small red circles left of a large blue square , vivid , clean background", 0)
    ok = judge(img, "two small red circles left of a large blue square , vivid , clean background")
    assert ok["exact"] and all(v for v in ok.values() if v is not None)
    v = judge(img, "a small red circle right of a large blue triangle , dull , noisy background")
    assert v["colour"] is True and v["size"] is True and v["intact"] is True
    assert v["count"] is False and v["relation"] is False and v["shape"] is False
    assert v["palette"] is False and v["background"] is False and v["exact"] is False
    single = judge(img, "two small red circles")
    assert single["count"] is False  # the blue square is an object the caption does not mention
    assert single["relation"] is None and single["palette"] is None


def test_broken_and_size_are_judged():
    img = render_caption("a large broken green triangle", 1)
    assert judge(img, "a large broken green triangle")["exact"]
    assert judge(img, "a large green triangle")["intact"] is False
    assert judge(img, "a small broken green triangle")["size"] is False


def test_mild_noise_on_a_render_keeps_objects_readable():
    rng = np.random.default_rng(0)
    img = render_caption("two large yellow squares", 5).astype(float)
    noisy = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    v = judge(noisy, "two large yellow squares")
    assert v["count"] and v["colour"] and v["shape"] and v["size"]
