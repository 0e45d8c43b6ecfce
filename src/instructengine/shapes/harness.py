"""ShapesWorld in the evaluation harness: a generator kind and three scorers.

Registered in :mod:`instructengine.evaluate` under these names (configs/eval_shapes.yaml)::

    models:  - {name: base, kind: shapes, options: {guidance_scale: 5.0}}
             - {name: aligned, kind: shapes, options: {unet: runs/demo/train/cv_dpo/final/unet}}
    scorers: [shapes_oracle, shapes_clip, shapes_aesthetic]

* ``shapes`` samples a ShapesWorld pipeline folder (default: the shipped model), optionally with a
  trained U-Net swapped in, or with its U-Net weights perturbed ("a perturbed copy");
* ``shapes_oracle``: exact match, one column per attribute (NaN where a caption does not state
  the attribute) and ``share`` (the share of stated attributes that hold, a graded score);
* ``shapes_clip``: the tiny contrastive model's image-text cosine (the world's CLIP score);
* ``shapes_aesthetic``: a prompt-free palette/cleanliness measure in [0, 1], the world's aesthetic
  predictor: half the objects' mean chroma relative to the vivid palette, half the background's
  cleanliness (1 for flat, 0 at twice the oracle's noisy threshold).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GENERATOR_OPTIONS", "ShapesEvalGenerator", "ablation_evaluator", "make_aesthetic", "make_clip", "make_generator", "make_oracle"]

#: the options of ``kind: shapes`` and their defaults (the main evaluation settings of ShapesWorld)
GENERATOR_OPTIONS: dict[str, Any] = {
    "path": None,                 # ShapesPipeline folder; None: the shipped model
    "unet": None,                 # a trained U-Net folder (diffusers format) swapped into the pipeline
    "perturb": 0.0,               # add perturb * std(param) Gaussian noise to every U-Net weight
    "perturb_seed": 1234,
    "guidance_scale": 5.0,
    "num_inference_steps": 20,
    "sampler": "dpmpp",
    "dtype": "float32",           # bfloat16: sample under autocast (faster on CPU, not bit-identical)
    "threads": None,              # torch CPU threads
}


def _rgb(images: Sequence[Any]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8) for im in images])


class ShapesEvalGenerator:
    """``generate(prompts, seeds) -> list[PIL.Image]`` over a ShapesWorld pipeline (see the module doc)."""

    def __init__(self, options: dict[str, Any], device: str = "cpu"):
        import torch

        from instructengine.images.config import GeneratorConfig
        from instructengine.images.generators import ShapesModelGenerator
        from instructengine.shapes.pipeline import load_pipeline

        unknown = sorted(set(options) - set(GENERATOR_OPTIONS))
        if unknown:
            raise ValueError(f"kind 'shapes': unknown option(s) {unknown}; known: {sorted(GENERATOR_OPTIONS)}")
        self.options = {**GENERATOR_OPTIONS, **options}
        o = self.options
        if o["threads"]:
            torch.set_num_threads(int(o["threads"]))
        pipe = load_pipeline(o["path"], device=device)
        if o["unet"]:
            from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR
            from instructengine.train.models import load_trained_unet

            try:
                unet = load_trained_unet(Path(o["path"] or DEFAULT_MODEL_DIR) / "unet", o["unet"])
            except FileNotFoundError as err:
                raise FileNotFoundError(f"kind 'shapes': option unet={o['unet']!r} is not a diffusers U-Net folder "
                                        f"or LoRA weights ({err})") from None
            pipe.unet = unet.to(device).eval()
        if float(o["perturb"]):
            g = torch.Generator().manual_seed(int(o["perturb_seed"]))
            with torch.no_grad():
                for p in pipe.unet.parameters():
                    p.add_(float(o["perturb"]) * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
        cfg = GeneratorConfig(kind="shapes_model", model=str(o["path"]) if o["path"] else None, device=device,
                              guidance_scale=float(o["guidance_scale"]),
                              num_inference_steps=int(o["num_inference_steps"]), sampler=o["sampler"], dtype=o["dtype"])
        self._gen = ShapesModelGenerator(cfg, pipe=pipe)

    def describe(self) -> dict[str, Any]:
        return {"kind": "shapes", **{k: (str(v) if isinstance(v, Path) else v) for k, v in self.options.items()}}

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        from PIL import Image

        return [Image.fromarray(a) for a in self._gen.generate(prompts, seeds).images]


def make_generator(options: dict[str, Any], device: str) -> ShapesEvalGenerator:
    return ShapesEvalGenerator(options, device)


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


def ablation_evaluator(model_dir: str | Path, name: str, run_dir: str | Path, prompts: str, seeds: list[int],
                       guidance_scale: float = 5.0, num_inference_steps: int = 20, sampler: str = "dpmpp",
                       dtype: str = "bfloat16", threads: int | None = None, batch_size: int = 200) -> "pd.DataFrame":
    """The ablation runner's evaluator (``instructengine.train.ablation``) through the harness: sample a
    ShapesWorld pipeline folder on ``prompts`` ('shapesbench' or a CSV with prompt[,category]) with
    ``seeds`` and judge every image with the oracle; returns the scores table (resumable on disk)."""
    import pandas as pd

    from instructengine.config import validate_config
    from instructengine.evaluate.config import EvalConfig
    from instructengine.evaluate.runner import evaluate

    bench = {"name": "shapesbench"} if prompts == "shapesbench" else {"name": Path(prompts).stem, "path": str(prompts)}
    options = {"path": str(model_dir), "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps,
               "sampler": sampler, "dtype": dtype, "threads": threads}
    cfg = validate_config(EvalConfig, {
        "run_dir": str(run_dir), "benchmark": bench, "seeds": list(seeds), "batch_size": batch_size,
        "score_batch_size": 400, "scorers": ["shapes_oracle"],
        "models": [{"name": name, "kind": "shapes", "options": options}],
    }, "ablation evaluator")
    folders = evaluate(cfg, log=lambda s: None)
    return pd.read_parquet(Path(folders[name]) / "scores.parquet")
