"""The ShapesWorld oracle: reads an image back and judges it against a caption, per attribute.

It plays the VLM judge of the data pipeline and gives the exact metrics of this world. Steps:
objects are the connected regions of chromatic pixels (after a 3x3 median filter against noise);
each object's colour is its nearest hue, its size its box, its shape and intactness the best
IoU among the shape templates the renderer uses; relations compare group centroids; palette is
the objects' mean chroma; background noise is the spread of non-object luminance.

Attributes: count, colour, shape, size, intact, relation, palette, background -> True/False, or
None where the caption does not state it. ``exact`` is True when every stated attribute holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from instructengine.shapes.render import DULL_MIX, SIZE_PX, object_mask
from instructengine.shapes.scene import COLOURS, SHAPES, Scene, parse_caption

ATTRIBUTES = ("count", "colour", "shape", "size", "intact", "relation", "palette", "background")

CHROMA_FOREGROUND = 0.2
CHROMA_GROW = 0.3
MIN_OBJECT_PIXELS = 6
VIVID_CHROMA = 0.84 * (1 - DULL_MIX / 2)  # halfway between vivid (~0.84) and dull (~0.42) chroma
NOISY_BG_STD = 0.03
SIZE_SPLIT = (SIZE_PX["small"] + SIZE_PX["large"]) / 2
_HUES = np.array([h for _, h in COLOURS.values()])
_COLOUR_NAMES = list(COLOURS)


@dataclass
class DetectedObject:
    colour: str
    shape: str
    intact: bool
    size: str
    centroid: tuple[float, float]  # (x, y)
    chroma: float
    pixels: int


def _hue(img: np.ndarray) -> np.ndarray:
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    mx, mn = img.max(-1), img.min(-1)
    d = np.where(mx - mn == 0, 1e-9, mx - mn)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0


def detect(image: np.ndarray) -> tuple[list[DetectedObject], float]:
    """Objects in an (H, W, 3) uint8 image, and the std of background luminance."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    img = image.astype(np.float64) / 255.0
    chroma = img.max(-1) - img.min(-1)
    # Hysteresis: object cores survive a 3x3 median filter (noise specks do not); an object is the
    # connected region of clearly chromatic pixels around a core, so thin tips are not eroded.
    core = ndimage.median_filter(chroma, size=3, mode="nearest") > CHROMA_FOREGROUND
    labels, n = ndimage.label(chroma > CHROMA_GROW)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[core])] = True
    keep[0] = False
    fg = keep[labels]
    labels, n = ndimage.label(fg)
    hue = _hue(img)
    objects = []
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[sl] == idx
        area = int(mask.sum())
        if area < MIN_OBJECT_PIXELS:
            continue
        sub = img[sl][mask]
        c = chroma[sl][mask]
        w = np.maximum(c, 1e-6)
        ang = np.deg2rad(hue[sl][mask])
        mean_hue = np.rad2deg(np.arctan2((w * np.sin(ang)).sum(), (w * np.cos(ang)).sum())) % 360
        dist = np.abs((_HUES - mean_hue + 180) % 360 - 180)
        colour = _COLOUR_NAMES[int(dist.argmin())]
        h, wd = mask.shape
        best, best_iou = ("circle", True), -1.0
        for shape in SHAPES:
            for intact in (True, False):
                t = object_mask(shape, h, wd, intact)
                iou = (t & mask).sum() / max((t | mask).sum(), 1)
                if iou > best_iou:
                    best, best_iou = (shape, intact), iou
        ys, xs = np.nonzero(mask)
        objects.append(DetectedObject(
            colour=colour, shape=best[0], intact=best[1],
            size="small" if max(h, wd) <= SIZE_SPLIT else "large",
            centroid=(float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start)),
            chroma=float(np.mean(sub.max(-1) - sub.min(-1))), pixels=area,
        ))
    background = ~ndimage.binary_dilation(fg, iterations=1)
    lum = img.mean(-1)[background]
    bg_std = float(lum.std()) if lum.size > 10 else 0.0
    return objects, bg_std


def judge_scene(image: np.ndarray, scene: Scene) -> dict[str, bool | None]:
    """Per-attribute verdicts and ``exact`` for one image against one scene."""
    objects, bg_std = detect(image)
    wanted = {g.colour: g for g in scene.groups}
    by_group = {c: [o for o in objects if o.colour == c] for c in wanted}
    strays = [o for o in objects if o.colour not in wanted]
    present = all(by_group[c] for c in wanted)

    out: dict[str, bool | None] = {a: None for a in ATTRIBUTES}
    out["count"] = not strays and all(len(by_group[c]) == g.count for c, g in wanted.items())
    out["colour"] = not strays and present
    out["shape"] = present and all(o.shape == g.shape for c, g in wanted.items() for o in by_group[c])
    out["size"] = present and all(o.size == g.size for c, g in wanted.items() for o in by_group[c])
    out["intact"] = present and all(o.intact == g.intact for c, g in wanted.items() for o in by_group[c])
    if scene.relation:
        out["relation"] = present and _relation_holds(scene, by_group)
    if scene.palette:
        vivid = bool(objects) and float(np.mean([o.chroma for o in objects])) > VIVID_CHROMA
        out["palette"] = bool(objects) and vivid == (scene.palette == "vivid")
    if scene.background:
        out["background"] = bool((bg_std > NOISY_BG_STD) == (scene.background == "noisy"))
    out = {k: (None if v is None else bool(v)) for k, v in out.items()}
    out["exact"] = all(v for v in out.values() if v is not None)
    return out


def _relation_holds(scene: Scene, by_group: dict[str, list[DetectedObject]]) -> bool:
    a, b = (by_group[g.colour] for g in scene.groups)
    ax, ay = np.mean([o.centroid for o in a], axis=0)
    bx, by = np.mean([o.centroid for o in b], axis=0)
    margin = 2.0
    return bool({
        "left of": ax + margin < bx, "right of": ax > bx + margin,
        "above": ay + margin < by, "below": ay > by + margin,
    }[scene.relation])


def judge(image: np.ndarray, caption: str) -> dict[str, bool | None]:
    """Judge an (H, W, 3) uint8 image against a ShapesWorld caption."""
    return judge_scene(image, parse_caption(caption))
