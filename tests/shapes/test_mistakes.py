"""The imperfect renderer: one attribute wrong with probability error_rate, judged wrong by the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from instructengine.generation import GeneratorConfig, build_generator
from instructengine.shapes.mistakes import MISTAKES, applicable_mistakes, imperfect_scene, make_mistake
from instructengine.shapes.oracle import judge_scene
from instructengine.shapes.render import render
from instructengine.shapes.scene import parse_caption

CAPTIONS = [
    "two small red circles , vivid , clean background",
    "a large blue square above two small broken green triangles , dull",
    "four large yellow triangles , noisy background",
    "a small cyan circle left of a large magenta square",
]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_every_applicable_mistake_changes_the_caption_and_fails_the_oracle(caption):
    scene = parse_caption(caption)
    rng = np.random.default_rng(0)
    for kind in applicable_mistakes(scene):
        for trial in range(5):
            wrong = make_mistake(scene, kind, rng)
            assert wrong.caption != scene.caption, kind
            verdict = judge_scene(render(wrong, trial), scene)
            assert verdict["exact"] is False, (kind, wrong.caption)


def test_mistakes_only_on_stated_style():
    scene = parse_caption("two small red circles")
    assert set(applicable_mistakes(scene)) == {"count", "colour", "shape", "size", "intact"}
    assert set(applicable_mistakes(parse_caption(CAPTIONS[1]))) == set(MISTAKES) - {"background"}
    with pytest.raises(ValueError, match="no relation"):
        make_mistake(scene, "relation", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown mistake"):
        make_mistake(scene, "mood", np.random.default_rng(0))


def test_error_rate_is_respected_and_deterministic():
    n = 2000
    made = [imperfect_scene(CAPTIONS[1], seed, 0.3)[1] for seed in range(n)]
    rate = sum(m is not None for m in made) / n
    assert 0.27 < rate < 0.33
    assert made == [imperfect_scene(CAPTIONS[1], seed, 0.3)[1] for seed in range(n)]
    assert all(imperfect_scene(CAPTIONS[0], s, 0.0)[1] is None for s in range(100))
    with pytest.raises(ValueError, match="error_rate"):
        imperfect_scene(CAPTIONS[0], 0, 1.5)


def test_render_generator_with_errors():
    perfect = build_generator(GeneratorConfig(kind="shapes_render"))
    flawed = build_generator(GeneratorConfig(kind="shapes_render", options={"error_rate": 0.5}))
    assert perfect.fingerprint != flawed.fingerprint
    prompts = [CAPTIONS[1]] * 400
    seeds = list(range(400))
    exact_perfect = [judge_scene(im, parse_caption(p))["exact"] for im, p in zip(perfect.generate(prompts, seeds).images, prompts)]
    exact_flawed = [judge_scene(im, parse_caption(p))["exact"] for im, p in zip(flawed.generate(prompts, seeds).images, prompts)]
    assert all(exact_perfect)
    assert 0.4 < np.mean(exact_flawed) < 0.6
    # an image is a function of its own (prompt, seed) only
    again = flawed.generate(prompts[:3][::-1], seeds[:3][::-1]).images[::-1]
    assert all(np.array_equal(a, b) for a, b in zip(again, flawed.generate(prompts[:3], seeds[:3]).images))
    with pytest.raises(ValueError, match=r"kind 'shapes_model': unknown option\(s\) \['error_rate'\]"):
        build_generator(GeneratorConfig(kind="shapes_model", options={"error_rate": 0.2}))
