"""Captions, the held-out split and the renderer."""

import numpy as np
import pytest

from instructengine.shapes.render import IMAGE_SIZE, object_mask, render, render_caption
from instructengine.shapes.scene import (
    CaptionError, Group, Scene, SceneSampler, heldout_keys, parse_caption, scene_is_heldout,
)


def test_every_sampled_caption_parses_back_to_its_scene():
    sampler = SceneSampler(split="any", rng=np.random.default_rng(0))
    for _ in range(500):
        scene = sampler.draw()
        assert parse_caption(scene.caption) == scene


def test_caption_grammar_example():
    scene = parse_caption("two small red circles left of a large broken blue square , dull , noisy background")
    assert scene.groups == (Group(2, "small", "red", "circle"), Group(1, "large", "blue", "square", intact=False))
    assert (scene.relation, scene.palette, scene.background) == ("left of", "dull", "noisy")


@pytest.mark.parametrize("caption, message", [
    ("", "empty"),
    ("two small red circle", "needs plural"),
    ("a small red circles", "needs singular"),
    ("a huge red circle", "expected a size"),
    ("a small pink circle", "expected a colour"),
    ("a small red circle near a large blue square", "expected a relation"),
    ("a small red circle left of a large red square", "differ in colour"),
    ("three small red circles above a large blue square", "at most 2"),
    ("a small red circle , shiny", "palette or background"),
])
def test_bad_captions_say_what_is_wrong(caption, message):
    with pytest.raises(CaptionError, match=message):
        parse_caption(caption)


def test_train_split_never_holds_out_and_heldout_split_always_does():
    train = SceneSampler(split="train", rng=np.random.default_rng(1))
    held = SceneSampler(split="heldout", rng=np.random.default_rng(2))
    assert not any(scene_is_heldout(train.draw()) for _ in range(3000))
    assert all(scene_is_heldout(held.draw()) for _ in range(300))
    assert 5 <= len(heldout_keys()) <= 30


def test_render_is_deterministic_and_seed_dependent():
    cap = "two small red circles left of a large blue square"
    a, b, c = render_caption(cap, 3), render_caption(cap, 3), render_caption(cap, 4)
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_style_words_change_the_pixels_as_stated():
    g = (Group(1, "large", "red", "circle"),)
    vivid_clean = render(Scene(g, palette="vivid", background="clean"), 0).astype(float) / 255
    dull_noisy = render(Scene(g, palette="dull", background="noisy"), 0).astype(float) / 255
    chroma = lambda im: (im.max(-1) - im.min(-1))  # noqa: E731
    assert chroma(vivid_clean).max() > 0.8 > chroma(dull_noisy).max()
    corner = (slice(0, 1), slice(0, 32))
    assert vivid_clean[corner].std() == 0 and dull_noisy[corner].std() > 0.02


def test_broken_shapes_miss_their_upper_right_part():
    for shape in ("circle", "square", "triangle"):
        intact, broken = object_mask(shape, 11, 11, True), object_mask(shape, 11, 11, False)
        assert broken.sum() < intact.sum() and not (broken & ~intact).any()
        assert not broken[:6, 6:].any()


def test_object_mask_is_cached_read_only_and_exact():
    """The oracle reads back every object against these masks, so the cache must not be writable
    (a caller's change would corrupt every later judgement); the values are the hand-derived ones."""
    tri = object_mask("triangle", 3, 3, True)
    # pixel centres 0.5, 1.5, 2.5: |x - 1.5| <= (y / 3) * 1.5 + 0.25, i.e. 0.5 / 1.0 / 1.5 per row
    assert tri.tolist() == [[False, True, False], [True, True, True], [True, True, True]]
    broken = object_mask("square", 4, 4, False)  # centres x >= 2 and y < 2.4 removed: rows 0.5, 1.5
    assert broken.tolist() == [[True, True, False, False], [True, True, False, False],
                               [True, True, True, True], [True, True, True, True]]
    assert object_mask("triangle", 3, 3, True) is tri
    with pytest.raises(ValueError, match="read-only"):
        tri[0, 0] = True
