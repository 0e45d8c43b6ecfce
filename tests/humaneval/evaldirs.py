"""Evaluation folders for the review tests, built on the spot (small PNGs + parquet files)."""

from __future__ import annotations

import json
from pathlib import Path

from instructengine.config import load_config
from instructengine.humaneval.config import ReviewConfig

PALETTE = [(47, 111, 223), (226, 114, 91), (52, 168, 83), (156, 39, 176), (255, 179, 0)]


def build_eval_run(root: Path, model: str, n_prompts: int = 6, seeds=(0,), prompts: list[str] | None = None,
                   benchmark: str = "drawbench", size: int = 64, style: int = 0) -> Path:
    """Write eval/<model>/<benchmark> as the evaluation harness does; returns the benchmark folder."""
    import pandas as pd
    from PIL import Image, ImageDraw

    bench = root / "eval" / model / benchmark
    (bench / "images").mkdir(parents=True, exist_ok=True)
    prompts = prompts or [f"a photo of {i + 1} red cubes on a table" for i in range(n_prompts)]
    pd.DataFrame({
        "prompt_index": list(range(len(prompts))), "prompt": prompts,
        "category": ["Counting" if i % 2 else "Colors" for i in range(len(prompts))],
    }).to_parquet(bench / "prompts.parquet")
    rows = []
    for i in range(len(prompts)):
        for s in seeds:
            im = Image.new("RGB", (size, size), (236, 238, 242))
            d = ImageDraw.Draw(im)
            color = PALETTE[(i + s + style) % len(PALETTE)]
            m = size // 6
            if style % 2:
                d.ellipse([m, m, size - m, size - m], fill=color)
            else:
                d.rectangle([m, m + i % 3, size - m, size - m], fill=color)
            rel = f"images/{i}_{s}.png"
            im.save(bench / rel)
            rows.append({"prompt_index": i, "seed": s, "path": rel})
    pd.DataFrame(rows).to_parquet(bench / "images.parquet")
    (bench / "generation.json").write_text(json.dumps({"model": model, "steps": 2, "guidance_scale": 5.0}))
    pd.DataFrame({"prompt_index": [0], "score": [0.5]}).to_parquet(bench / "scores.parquet")
    (bench / "summary.json").write_text(json.dumps({"average": 0.5}))
    return bench


def review_config(tmp_path: Path, runs: list[Path], *overrides: str) -> ReviewConfig:
    runs_yaml = "[" + ",".join(str(r) for r in runs) + "]"
    return load_config(ReviewConfig, None, [f"study_dir={tmp_path / 'study'}", f"study.runs={runs_yaml}", *overrides])
