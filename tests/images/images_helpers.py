"""Shared helpers of the image-stage tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from instructengine.images.config import DataPipelineConfig
from instructengine.generation import Generated

TINY_SHAPES = dict(block_out_channels=(8, 16), attention_levels=(False, True), layers_per_block=1,
                   attention_head_dim=4, text_hidden_size=16, text_layers=1, text_heads=2)


def run_shapes_text_stages(run_dir: Path, pairs_per_request: int = 4) -> None:
    from instructengine.text_pipeline import TextPipelineConfig, run_text_stages

    cfg = TextPipelineConfig.model_validate({
        "run_dir": str(run_dir),
        "backend": {"kind": "shapes_rules"},
        "embedder": {"kind": "ngram"},
        "taxonomy": {"seeds": ["circles", "squares", "triangles"], "n_themes": 3, "theme_samples": 1,
                     "axes": ["theme", "style", "time and space"], "subtopics_per_theme": 10,
                     "subtopic_samples": 1, "dedupe_threshold": 0.99},
        "entities": {"per_subtopic": 12, "similarity_threshold": -1.0, "dedupe_threshold": 0.999},
        "pairs": {"pairs_per_request": pairs_per_request, "min_words": 2, "max_words": 40},
    })
    run_text_stages(cfg)


def copy_text_run(src: Path, dst: Path) -> Path:
    """A fresh run folder holding the text stages' outputs of ``src``."""
    for stage in ("taxonomy", "entities", "instructions"):
        shutil.copytree(src / stage, dst / stage)
    return dst


def save_tiny_shapes_pipeline(path: Path, seed: int = 0) -> Path:
    import torch

    from instructengine.shapes.pipeline import ShapesModelConfig, ShapesPipeline, build_components

    torch.manual_seed(seed)
    ShapesPipeline(**build_components(ShapesModelConfig(**TINY_SHAPES))).save_pretrained(path)
    return path


def write_pairs(run_dir: Path, pairs: list[tuple[str, str]], dimension: str = "content") -> pd.DataFrame:
    """A hand-made pairs.parquet (columns of instructengine.instructions.stage.PAIR_COLUMNS)."""
    from instructengine.instructions.stage import PAIR_COLUMNS

    rows = [{"pair_id": f"p{i:04d}", "entity_id": f"e{i % 3}", "theme": ["circles", "squares", "triangles"][i % 3],
             "subtopic": "test", "entity": "thing", "dimension": dimension, "instruction_1": a, "instruction_2": b}
            for i, (a, b) in enumerate(pairs)]
    df = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    (run_dir / "instructions").mkdir(parents=True, exist_ok=True)
    df.to_parquet(run_dir / "instructions" / "pairs.parquet")
    return df


def make_config(run_dir: Path, **sections: Any) -> DataPipelineConfig:
    data: dict[str, Any] = {
        "run_dir": str(run_dir),
        "generator": {"kind": "shapes_render"},
        "candidates": {"n_candidates": 3, "instructions_per_call": 4},
        "select": {"scorer": {"kind": "shapes_oracle", "column": "share"}},
        "judge": {"kind": "shapes_oracle"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return DataPipelineConfig.model_validate(data)


def write_config(cfg: DataPipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def stage_artifacts(run_dir: Path) -> dict[str, Any]:
    """Every file of the candidates stage that is an artifact (not bookkeeping), as bytes."""
    root = Path(run_dir) / "candidates"
    out = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}
    out["candidates.parquet"] = pd.read_parquet(root / "candidates.parquet")
    return out


def assert_same_candidates(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    pd.testing.assert_frame_equal(a.pop("candidates.parquet"), b.pop("candidates.parquet"))
    diff = [k for k in a if a[k] != b[k]]
    assert diff == [], f"{len(diff)} images differ, e.g. {diff[:3]}"


def manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / stage / "manifest.json").read_text())


class MistakeRenderGenerator:
    """The renderer, except that candidates whose seed is divisible by ``every`` show a wrong scene
    (one attribute changed), and those divisible by ``flag_every`` are flagged as by a safety checker."""

    def __init__(self, every: int = 3, flag_every: int | None = None):
        self.every, self.flag_every = every, flag_every
        self.fingerprint = f"mistake-render:{every}:{flag_every}"
        self.calls: list[int] = []

    def generate(self, prompts, seeds) -> Generated:
        from instructengine.shapes.contrastive import perturb
        from instructengine.shapes.render import render
        from instructengine.shapes.scene import parse_caption

        self.calls.append(len(prompts))
        images = []
        for p, s in zip(prompts, seeds):
            scene = parse_caption(p)
            if s % self.every == 0:
                scene = perturb(scene, np.random.default_rng(s))
            images.append(render(scene, int(s)))
        flagged = [self.flag_every is not None and s % self.flag_every == 1 for s in seeds] if self.flag_every else None
        return Generated(images, flagged)


def make_mistake_generator(cfg) -> MistakeRenderGenerator:
    """A generator factory (called with the GeneratorConfig): options ``every`` and ``flag_every``."""
    return MistakeRenderGenerator(cfg.options.get("every", 3), cfg.options.get("flag_every"))


SD_WORDS = ["a", "small", "large", "red", "blue", "green", "circle", "circles", "square", "two", "portrait",
            "watercolor", "of", "the", "cat", "dog", "photo"]


def save_tiny_sd_pipeline(path: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionPipeline (random weights, real diffusers/transformers classes) saved as a folder."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_clip import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer(SD_WORDS)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=2,
                                        eos_token_id=3, pad_token_id=0))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel + tokenizer folder (for the evaluate package's `clip` scorer)."""
    from tiny_clip import tiny_clip_model, tiny_tokenizer

    tok = tiny_tokenizer(SD_WORDS)
    tiny_clip_model(tok, seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path
