"""ShapesWorld's three scorers, registered by the bundle (configs/eval_shapes.yaml)::

    models:  - {name: base, kind: shapes_model, guidance_scale: 5.0}
             - {name: aligned, kind: shapes_model, unet: runs/demo/train/cv_dpo/final/unet}
    scorers: [shapes_oracle, shapes_clip, shapes_aesthetic]

(the generator ``shapes_model`` is :mod:`instructengine.shapes.generators`)

* ``shapes_oracle``: exact match, one column per attribute (NaN where a caption does not state
  the attribute) and ``share`` (the share of stated attributes that hold, a graded score);
* ``shapes_clip``: the tiny contrastive model's image-text cosine (the world's CLIP score);
* ``shapes_aesthetic``: a prompt-free palette/cleanliness measure in [0, 1], the world's aesthetic
  predictor: half the objects' mean chroma relative to the vivid palette, half the background's
  cleanliness (1 for flat, 0 at twice the oracle's noisy threshold).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["AestheticScorer", "ClipScorer", "OracleScorer", "aesthetic_score", "make_aesthetic", "make_clip", "make_oracle"]


def _rgb(images: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8) for im in images])


class OracleScorer:
    """The exact oracle. Columns: ``exact``, one per attribute (NaN = not stated in the caption) and
    ``share``, the share of the stated attributes that hold (a graded score: the data pipeline's
    AGFSync baseline uses it with ``column: share``). A prompt that is not a ShapesWorld caption gets a
    row of NaN (not measured)."""

    name = "shapes_oracle"

    def __init__(self) -> None:
        from instructengine.shapes.oracle import ATTRIBUTES

        self.attributes = tuple(ATTRIBUTES)
        self.columns = ("exact",) + self.attributes + ("share",)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        from instructengine.shapes.oracle import judge
        from instructengine.shapes.scene import CaptionError

        if len(images) != len(prompts):
            raise ValueError(f"shapes_oracle: {len(images)} images but {len(prompts)} prompts")
        out = np.full((len(prompts), len(self.columns)), np.nan)
        for i, (im, prompt) in enumerate(zip(_rgb(images), prompts)):
            try:
                verdict = judge(im, prompt)
            except CaptionError:
                continue
            attrs = np.array([np.nan if verdict[a] is None else float(verdict[a]) for a in self.attributes])
            out[i, 0] = float(verdict["exact"])
            out[i, 1:-1] = attrs
            out[i, -1] = np.nanmean(attrs) if not np.isnan(attrs).all() else float(verdict["exact"])
        return out


class ClipScorer:
    """The tiny contrastive model's cosine between image and caption."""

    name = "shapes_clip"

    def __init__(self, path: str | None, device: str):
        from instructengine.shapes.contrastive import ShapesClipScorer

        self.model = ShapesClipScorer(path, device=device)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.score(_rgb(images), list(prompts)), dtype=float)


def aesthetic_score(image: np.ndarray) -> float:
    """Palette/cleanliness in [0, 1] of one (H, W, 3) uint8 image (see the module doc)."""
    from instructengine.shapes.oracle import NOISY_BG_STD, VIVID_CHROMA, detect
    from instructengine.shapes.render import DULL_MIX

    objects, bg_std = detect(image)
    vivid_ref = VIVID_CHROMA / (1 - DULL_MIX / 2)  # the vivid palette's chroma (~0.84)
    chroma = float(np.mean([o.chroma for o in objects])) if objects else 0.0
    palette = min(chroma / vivid_ref, 1.0)
    clean = 1.0 - min(bg_std / (2 * NOISY_BG_STD), 1.0)
    return 0.5 * palette + 0.5 * clean


class AestheticScorer:
    """The world's aesthetic predictor: :func:`aesthetic_score`, prompt-free like LAION's."""

    name = "shapes_aesthetic"

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray:
        return np.array([aesthetic_score(im) for im in _rgb(images)], dtype=float)


def make_oracle(options: dict[str, Any], ctx: Any) -> OracleScorer:
    if options:
        raise ValueError(f"scorer shapes_oracle takes no options, got {sorted(options)}")
    return OracleScorer()


def make_clip(options: dict[str, Any], ctx: Any) -> ClipScorer:
    unknown = sorted(set(options) - {"path"})
    if unknown:
        raise ValueError(f"scorer shapes_clip: unknown option(s) {unknown}; known: ['path']")
    return ClipScorer(options.get("path"), getattr(ctx, "device", "cpu"))


def make_aesthetic(options: dict[str, Any], ctx: Any) -> AestheticScorer:
    if options:
        raise ValueError(f"scorer shapes_aesthetic takes no options, got {sorted(options)}")
    return AestheticScorer()
