"""How ShapesWorld plugs into the harness: a generator factory and scorer factories (test copies).

``instructengine.shapes`` owns the real ones; these show the two protocols with ShapesWorld's
pipeline and oracle, and let the harness be timed on a ShapesWorld-sized job.
"""

from __future__ import annotations

import numpy as np


class ShapesGenerator:
    """``generate(prompts, seeds) -> list[PIL.Image]`` over a ShapesPipeline (random or saved)."""

    def __init__(self, options: dict, device: str):
        import torch

        from instructengine.shapes.pipeline import ShapesModelConfig, ShapesPipeline, build_components, load_pipeline

        if options.get("path"):
            self.pipe = load_pipeline(options["path"], device)
        else:  # an untrained model from a fixed seed, optionally perturbed ("a perturbed copy")
            torch.manual_seed(int(options.get("init_seed", 0)))
            comps = build_components(ShapesModelConfig())
            comps.pop("noise_scheduler", None)
            self.pipe = ShapesPipeline(**{k: comps[k] for k in ("unet", "text_encoder", "tokenizer", "scheduler")}).to(device)
            noise = float(options.get("perturb", 0.0))
            if noise:
                g = torch.Generator().manual_seed(1234)
                with torch.no_grad():
                    for p in self.pipe.unet.parameters():
                        p.add_(noise * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
        self.steps = int(options.get("num_inference_steps", 20))
        self.guidance = float(options.get("guidance_scale", 3.0))

    def describe(self):
        return {"kind": "shapes", "num_inference_steps": self.steps, "guidance_scale": self.guidance}

    def generate(self, prompts, seeds):
        from PIL import Image

        arr = self.pipe(list(prompts), list(seeds), guidance_scale=self.guidance, num_inference_steps=self.steps)
        return [Image.fromarray(a) for a in arr]


def make_shapes_generator(options, device):
    return ShapesGenerator(options, device)


class OracleScorer:
    """The ShapesWorld oracle as a multi-column scorer: exact match and one column per attribute."""

    name = "oracle"

    def __init__(self):
        from instructengine.shapes.oracle import ATTRIBUTES

        self.columns = ("exact",) + tuple(ATTRIBUTES)

    def score(self, images, prompts):
        from instructengine.shapes.oracle import judge_batch

        verdicts = judge_batch([np.asarray(im) for im in images], list(prompts))
        return np.array([[np.nan if v[c] is None else float(v[c]) for c in self.columns] for v in verdicts])


def make_oracle(options, ctx):
    return OracleScorer()
