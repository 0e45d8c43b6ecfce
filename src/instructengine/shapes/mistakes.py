"""An imperfect ShapesWorld generator: the renderer with one attribute of a scene sometimes wrong.

The paper draws its candidates with SDXL, a stronger model than the SD1.5 it aligns, and relies on
best-of-N and the VLM judge to drop the images that miss the instruction. In ShapesWorld the tiny
diffusion model gets a whole caption right too rarely for that on two CPU cores (see
docs/data_pipeline_images.md: ~5% of its pairs survive the judge), so the default data config
plays the stronger generator with the renderer and makes it err: with probability
``error_rate`` an image shows a scene with exactly one attribute changed, the kinds of mistake a
text-to-image model makes (a wrong count, colour, shape or size, a broken or intact object, a
swapped relation, the other palette or background). The selection scorer and the oracle judge
then have real work: a candidate set may hold no correct image, and best-of-N may pick a wrong one.

Everything is a function of (caption, seed), so images are reproducible one by one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from instructengine.shapes.scene import (
    BACKGROUNDS, COLOURS, COUNTS, MAX_COUNT_IN_RELATION, PALETTES, SHAPES, SIZES, Scene,
    parse_caption,
)

#: the attributes a mistake can change; palette/background only when the caption states them
MISTAKES = ("count", "colour", "shape", "size", "intact", "relation", "palette", "background")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _other(values, current, rng: np.random.Generator, exclude=()):
    choices = [v for v in values if v != current and v not in exclude]
    return choices[int(rng.integers(len(choices)))]


def applicable_mistakes(scene: Scene) -> list[str]:
    """The mistakes that change what ``scene``'s caption states."""
    kinds = ["count", "colour", "shape", "size", "intact"]
    if scene.relation:
        kinds.append("relation")
    if scene.palette:
        kinds.append("palette")
    if scene.background:
        kinds.append("background")
    return kinds


def make_mistake(scene: Scene, kind: str, rng: np.random.Generator) -> Scene:
    """``scene`` with attribute ``kind`` changed (in a random group for group attributes)."""
    if kind not in MISTAKES:
        raise ValueError(f"unknown mistake {kind!r}; expected one of {MISTAKES}")
    if kind == "relation":
        if not scene.relation:
            raise ValueError(f"scene {scene.caption!r} has no relation to swap")
        return replace(scene, relation=OPPOSITE[scene.relation])
    if kind == "palette":
        return replace(scene, palette=_other(PALETTES, scene.palette, rng))
    if kind == "background":
        return replace(scene, background=_other(BACKGROUNDS, scene.background, rng))
    i = int(rng.integers(len(scene.groups)))
    g = scene.groups[i]
    if kind == "count":
        top = MAX_COUNT_IN_RELATION if len(scene.groups) == 2 else max(COUNTS)
        g = replace(g, count=_other(range(1, top + 1), g.count, rng))
    elif kind == "colour":
        taken = {h.colour for h in scene.groups}
        g = replace(g, colour=_other(COLOURS, g.colour, rng, exclude=taken))
    elif kind == "shape":
        g = replace(g, shape=_other(SHAPES, g.shape, rng))
    elif kind == "size":
        g = replace(g, size=_other(SIZES, g.size, rng))
    else:  # intact
        g = replace(g, intact=not g.intact)
    groups = list(scene.groups)
    groups[i] = g
    return replace(scene, groups=tuple(groups))


def imperfect_scene(caption: str, seed: int, error_rate: float) -> tuple[Scene, str | None]:
    """The scene an imperfect generator draws for ``caption`` with ``seed``, and its mistake (or None).

    Raises:
        CaptionError: ``caption`` is not a ShapesWorld caption.
        ValueError: ``error_rate`` outside [0, 1].
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    scene = parse_caption(caption)
    # a stream independent of the renderer's own use of the seed (layout, jitter)
    rng = np.random.default_rng([int(seed), 0x5EED])
    if rng.random() >= error_rate:
        return scene, None
    kinds = applicable_mistakes(scene)
    kind = kinds[int(rng.integers(len(kinds)))]
    return make_mistake(scene, kind, rng), kind


__all__ = ["MISTAKES", "applicable_mistakes", "imperfect_scene", "make_mistake"]
