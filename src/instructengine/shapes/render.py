"""Procedural renderer of ShapesWorld scenes: (scene, seed) -> 32x32 RGB uint8 image.

Deterministic: the same scene and seed give the same pixels. Style attributes that the caption
leaves out (palette, background) are drawn from the seed. Geometry (object masks) is shared with
the oracle (:func:`object_mask`), so a render is read back exactly.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from instructengine.shapes.scene import BACKGROUNDS, COLOURS, PALETTES, Scene

IMAGE_SIZE = 32
SIZE_PX = {"small": 7, "large": 11}
MIN_GAP = 2  # background pixels between two objects' boxes, so objects never touch
DULL_GREY = 0.55
DULL_MIX = 0.5  # dull colour = (1 - DULL_MIX) * vivid + DULL_MIX * grey
NOISY_BG_MEAN, NOISY_BG_STD = 0.90, 0.06
COLOUR_JITTER = 0.03


def object_mask(shape: str, h: int, w: int, intact: bool = True) -> np.ndarray:
    """Boolean (h, w) mask of a shape filling an h x w box; broken shapes miss their upper-right part.
    Cached (the oracle asks for the same few boxes for every object it reads back): the array is
    read-only, copy it to change it."""
    return _object_mask(shape, int(h), int(w), bool(intact))


@lru_cache(maxsize=4096)
def _object_mask(shape: str, h: int, w: int, intact: bool) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    if shape == "circle":
        m = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2 <= 1.0 + 1e-9
    elif shape == "square":
        m = np.ones((h, w), dtype=bool)
    elif shape == "triangle":
        m = np.abs(x - w / 2) <= (y / h) * (w / 2) + 0.25
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if not intact:
        m = m & ~((x >= w / 2) & (y < 0.6 * h))
    m.setflags(write=False)
    return m


def dull(rgb: np.ndarray) -> np.ndarray:
    return (1 - DULL_MIX) * rgb + DULL_MIX * DULL_GREY


def _place(rng: np.random.Generator, sizes: list[int], region: tuple[int, int, int, int],
           taken: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """Top-left corners for boxes of the given sizes inside region (x0, y0, x1, y1), not touching."""
    x0, y0, x1, y1 = region
    for _attempt in range(200):
        boxes: list[tuple[int, int, int, int]] = []
        ok = True
        for s in sizes:
            for _try in range(60):
                x = int(rng.integers(x0, x1 - s + 1))
                y = int(rng.integers(y0, y1 - s + 1))
                b = (x, y, x + s, y + s)
                if all(b[2] + MIN_GAP <= o[0] or o[2] + MIN_GAP <= b[0] or b[3] + MIN_GAP <= o[1]
                       or o[3] + MIN_GAP <= b[1] for o in taken + boxes):
                    boxes.append(b)
                    break
            else:
                ok = False
                break
        if ok:
            return [(b[0], b[1]) for b in boxes]
    raise RuntimeError(f"cannot place objects of sizes {sizes} in region {region}")


def _regions(scene: Scene) -> list[tuple[int, int, int, int]]:
    n, half = IMAGE_SIZE, IMAGE_SIZE // 2
    full = (1, 1, n - 1, n - 1)
    if scene.relation is None:
        return [full]
    left, right = (1, 1, half - 1, n - 1), (half + 1, 1, n - 1, n - 1)
    top, bottom = (1, 1, n - 1, half - 1), (1, half + 1, n - 1, n - 1)
    return {
        "left of": [left, right], "right of": [right, left],
        "above": [top, bottom], "below": [bottom, top],
    }[scene.relation]


def resolve_style(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """The palette and background actually drawn: the caption's, or random where it says nothing."""
    palette = scene.palette or PALETTES[int(rng.integers(2))]
    background = scene.background or BACKGROUNDS[int(rng.integers(2))]
    return palette, background


def render(scene: Scene, seed: int) -> np.ndarray:
    """Render ``scene`` with randomness from ``seed``; returns (32, 32, 3) uint8."""
    rng = np.random.default_rng(seed)
    palette, background = resolve_style(scene, rng)
    n = IMAGE_SIZE
    if background == "clean":
        img = np.ones((n, n, 3))
    else:
        img = np.repeat(np.clip(rng.normal(NOISY_BG_MEAN, NOISY_BG_STD, (n, n, 1)), 0, 1), 3, axis=2)
    taken: list[tuple[int, int, int, int]] = []
    for group, region in zip(scene.groups, _regions(scene)):
        s = SIZE_PX[group.size]
        corners = _place(rng, [s] * group.count, region, taken)
        for (x, y) in corners:
            taken.append((x, y, x + s, y + s))
            rgb = np.asarray(COLOURS[group.colour][0]) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)
            if palette == "dull":
                rgb = dull(rgb)
            m = object_mask(group.shape, s, s, group.intact)
            img[y:y + s, x:x + s][m] = np.clip(rgb, 0, 1)
    return np.round(img * 255).astype(np.uint8)


def render_caption(caption: str, seed: int) -> np.ndarray:
    from instructengine.shapes.scene import parse_caption

    return render(parse_caption(caption), seed)


def render_batch(scenes: list[Scene], seeds: list[int]) -> np.ndarray:
    return np.stack([render(s, int(seed)) for s, seed in zip(scenes, seeds)])
