"""Small stand-ins that plug into the harness by import path, as the ShapesWorld parts will."""

from __future__ import annotations

import numpy as np

from instructengine.generation import Generated


class ConstantScorer:
    """Two columns: a constant, and the item's position in the batch (a multi-column scorer)."""

    def __init__(self, value: float):
        self.name = "const"
        self.columns = ("const_a", "const_b")
        self.value = value

    def score(self, images, prompts):
        n = len(images)
        return np.stack([np.full(n, self.value), np.arange(n, dtype=float)], axis=1)


def make_constant(options, ctx):
    return ConstantScorer(float(options.get("value", 1.0)))


class RednessScorer:
    """Mean red minus mean blue of the image, in [-1, 1]: a cheap metric that tells models apart."""

    name = "redness"
    columns = ("redness",)

    def score(self, images, prompts):
        out = []
        for im in images:
            a = np.asarray(im, dtype=np.float64) / 255.0
            out.append(a[..., 0].mean() - a[..., 2].mean())
        return np.array(out)


def make_redness(options, ctx):
    return RednessScorer()


class ColourGenerator:
    """A deterministic "model": noise from the seed, tinted by the prompt's colour word and a bias."""

    def __init__(self, red_bias: float = 0.0, size: int = 32):
        self.red_bias = red_bias
        self.size = size
        self.calls = 0
        self.fingerprint = f"colour-test:{red_bias}:{size}"

    def describe(self):
        return {"kind": "colour-test-generator", "red_bias": self.red_bias, "size": self.size}

    def generate(self, prompts, seeds):
        self.calls += 1
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng(s)
            a = rng.uniform(0.2, 0.6, (self.size, self.size, 3))
            if "red" in p:
                a[..., 0] += 0.3
            if "blue" in p:
                a[..., 2] += 0.3
            a[..., 0] += self.red_bias
            out.append((np.clip(a, 0, 1) * 255).astype(np.uint8))
        return Generated(out)


def make_colour_generator(cfg):
    """A generator factory: called with the GeneratorConfig (its ``options`` are the generator's)."""
    return ColourGenerator(**cfg.options)
