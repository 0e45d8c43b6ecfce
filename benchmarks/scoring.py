"""Scoring: the paper's six scorers over one shared decode vs each scorer on its own.

* ``shared``        -- what the evaluation runner does (``instructengine.evaluate.runner._score``): every
                       batch of PNGs is decoded once and handed to all six scorers, built on ONE
                       ``ScorerContext`` (so CLIP ViT-L/14 is loaded once for the CLIP score and the
                       aesthetic head, and its image features are computed once per batch);
* ``one_at_a_time`` -- each scorer built on its own context and run over all images by itself, decoding
                       the PNGs again every time.

Scorers: pickscore, imagereward, hpsv2, clip, blip, aesthetic, built by their factories from tiny
random weights written in the real checkpoints' on-disk formats (``tests/evaluate/tiny.py``), so every
load path, preprocessing and forward is the real one; only the networks are small.

    python benchmarks/scoring.py                     # 64 images of 512 px, batches of 16
    python benchmarks/scoring.py --tiny --out /tmp/score.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "evaluate"))
from _common import finish, machine, median, table  # noqa: E402

SIX = ("pickscore", "imagereward", "hpsv2", "clip", "blip", "aesthetic")
PROMPTS = ["a red car", "two blue dogs", "a green circle on the square", "three cats on the plate"]


def write_scorer_files(root: Path) -> dict[str, dict[str, Any]]:
    """Tiny weights of the six scorers in their real formats; returns each scorer's options."""
    import torch

    import tiny

    tiny.write_tiny_clip(root / "clip", seed=0)
    tiny.write_reward_mlp(root / "aesthetic.pth", input_size=8)
    vocab, _ = tiny.write_clip_tokenizer(root / "tok")
    torch.save({"state_dict": tiny.open_clip_state_dict(vocab, seed=3)}, root / "HPS_v2_compressed.pt")
    bvocab = tiny.write_bert_tokenizer(root / "bert")
    tiny.write_med_config(root / "med_config.json", bvocab)
    torch.save({"model": tiny.blip_state_dict(bvocab, seed=1)}, root / "model_large.pth")
    ir = tiny.blip_state_dict(bvocab, seed=2, prefix="blip.")
    ir.update(tiny.write_reward_mlp(None, input_size=16, seed=3, prefix="mlp."))
    torch.save(ir, root / "ImageReward.pt")
    blip = {"med_config": str(root / "med_config.json"), "tokenizer": str(root / "bert")}
    return {
        "pickscore": {"model": str(root / "clip"), "processor": str(root / "clip")},
        "imagereward": {"checkpoint": str(root / "ImageReward.pt"), **blip},
        "hpsv2": {"checkpoint": str(root / "HPS_v2_compressed.pt"), "tokenizer": str(root / "tok"),
                  "vision_heads": 2, "text_heads": 2},
        "clip": {"model": str(root / "clip")},
        "blip": {"checkpoint": str(root / "model_large.pth"), **blip},
        "aesthetic": {"clip_model": str(root / "clip"), "head": str(root / "aesthetic.pth")},
    }


def write_images(root: Path, n: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # smooth random images (a noise image compresses unlike a real one)
        small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(root / f"{i}.png")
        paths.append(root / f"{i}.png")
    return paths


def _decode(paths: list[Path]) -> list[Any]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=512, help="PNG side in pixels")
    ap.add_argument("--batch", type=int, default=16, help="images per scorer call (the runner's score_batch_size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU more threads stall)")
    ap.add_argument("--tiny", action="store_true", help="CI size: 8 images of 64 px, 1 round")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.images, args.image_size, args.batch, args.rounds = 8, 64, 4, 1
    import torch

    from instructengine.scorers import ScorerContext, build_scorer, score_columns

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    options = write_scorer_files(root / "weights")
    paths = write_images(root / "images", args.images, args.image_size)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    chunks = [(paths[i:i + args.batch], prompts[i:i + args.batch]) for i in range(0, len(paths), args.batch)]

    t0 = time.perf_counter()
    ctx = ScorerContext()
    shared = {k: build_scorer(k, options[k], ctx) for k in SIX}
    build_shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = {k: build_scorer(k, options[k], ScorerContext()) for k in SIX}
    build_alone = time.perf_counter() - t0

    def run_shared() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k in SIX}
        for ps, pr in chunks:
            images = _decode(ps)
            for k in SIX:
                out[k] += score_columns(shared[k], images, pr)[k].tolist()
        return out

    def run_alone() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k in SIX}
        for k in SIX:
            for ps, pr in chunks:
                out[k] += score_columns(alone[k], _decode(ps), pr)[k].tolist()
        return out

    run_shared(), run_alone()  # warm-up
    times: dict[str, list[float]] = {"shared": [], "one_at_a_time": []}
    for _ in range(args.rounds):
        for name, fn in (("shared", run_shared), ("one_at_a_time", run_alone)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    # the two ways must give the same scores (else the comparison is meaningless)
    a, b = run_shared(), run_alone()
    max_diff = max(abs(x - y) for k in SIX for x, y in zip(a[k], b[k]))
    if max_diff > 1e-4:
        raise RuntimeError(f"shared and one-at-a-time scores differ by {max_diff}")
    tmp.cleanup()
    base = median(times["one_at_a_time"])
    rows = [{"variant": k, "decodes_per_image": 1 if k == "shared" else len(SIX), "median_s": round(median(v), 4),
             "images_per_s": round(args.images / median(v), 2), "speed_vs_one_at_a_time": round(base / median(v), 3),
             "build_s": round(build_shared if k == "shared" else build_alone, 3)} for k, v in times.items()]
    result = {"benchmark": "scoring", "scorers": list(SIX), "images": args.images, "image_size": args.image_size,
              "batch": args.batch, "rounds": args.rounds, "threads": args.threads, "variants": rows,
              "max_score_difference": max_diff, "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
              "machine": machine()}
    text = table(f"Six scorers on {args.images} PNGs of {args.image_size} px, batch {args.batch}", rows,
                 ["variant", "decodes_per_image", "median_s", "images_per_s", "speed_vs_one_at_a_time", "build_s"])
    return finish(result, args.out, text, args.quiet)


if __name__ == "__main__":
    main()
