"""Reference measurements of ShapesWorld (the numbers quoted in docs/shapesworld.md)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from instructengine.shapes.oracle import judge_scene
from instructengine.shapes.render import render
from instructengine.shapes.scene import SceneSampler


def oracle_checks(n: int = 2000, seed: int = 0) -> dict:
    """Agreement of the oracle with the caption on renders, and acceptance of noise/blank images
    (each judged against a random caption)."""
    rng = np.random.default_rng(seed)
    sampler = SceneSampler(split="any", rng=rng)
    scenes = [sampler.draw() for _ in range(n)]
    t0 = time.perf_counter()
    images = [render(s, 1000 + i) for i, s in enumerate(scenes)]
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    agree = [judge_scene(im, s)["exact"] for im, s in zip(images, scenes)]
    t_judge = time.perf_counter() - t0
    noise = [judge_scene(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), s)["exact"] for s in scenes]
    blank = [judge_scene(np.full((32, 32, 3), 255, np.uint8), s)["exact"] for s in scenes]
    shuffled = [judge_scene(images[i], scenes[(i + 1) % n])["exact"] for i in range(n)]
    return {
        "n": n,
        "agreement_on_renders": float(np.mean(agree)),
        "accepts_uniform_noise": float(np.mean(noise)),
        "accepts_blank": float(np.mean(blank)),
        "accepts_render_with_other_caption": float(np.mean(shuffled)),
        "renders_per_s": round(n / t_render, 1),
        "judgements_per_s": round(n / t_judge, 1),
    }


def folder_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20, 2)


def measure_world(n: int = 2000) -> dict:
    from instructengine.shapes.contrastive import DEFAULT_CLIP_DIR, ShapesClipScorer, retrieval_accuracy
    from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR, load_pipeline

    out = {"oracle": oracle_checks(n)}
    out["checkpoint_mb"] = {"shapes-t2i": folder_mb(DEFAULT_MODEL_DIR), "shapes-clip": folder_mb(DEFAULT_CLIP_DIR)}
    out["contrastive_retrieval"] = retrieval_accuracy(ShapesClipScorer())
    pipe = load_pipeline()
    prompts = [SceneSampler(split="heldout", rng=np.random.default_rng(5)).draw().caption for _ in range(64)]
    t0 = time.perf_counter()
    pipe(prompts, list(range(64)), num_inference_steps=20)
    out["sampling_images_per_s_20_steps_cfg"] = round(64 / (time.perf_counter() - t0), 1)
    out["unet_parameters"] = int(sum(p.numel() for p in pipe.unet.parameters()))
    out["text_encoder_parameters"] = int(sum(p.numel() for p in pipe.text_encoder.parameters()))
    return out
