"""Shared fixtures of the training tests: tiny models saved in diffusers layout, tiny datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from instructengine.train.tiny import tiny_clip_model, tiny_components, save_model, write_candidates, write_samples

    root = tmp_path_factory.mktemp("train_tiny")
    for kind in ("sd15", "sdxl", "shapes"):
        save_model(kind, tiny_components(kind), root / kind)
    write_samples(root / "data", n=8, size=16)
    write_candidates(root / "data", prompts=4, per_prompt=3, size=16)
    tiny_clip_model(root / "clip", image_size=16)
    return root


def make_config(root: Path, run_dir: Path, kind: str, method: str, **over: Any):
    """A TrainConfig for the tiny models: 2 steps of batch 4 (2 micro-batches of 2), CPU, no resume."""
    from instructengine.train.config import TrainConfig

    data = {"model": {"kind": kind, "path": str(root / kind)},
            "data": {"path": str(root / "data"), "resolution": 16},
            "method": method, "run_dir": str(run_dir), "batch_size": 4, "micro_batch_size": 2, "max_steps": 2,
            "device": "cpu", "tensorboard": False, "optim": {"lr": 1e-3},
            "checkpoint": {"every_n_steps": 100, "resume": "never"},
            "refl": {"reward": "clip", "reward_kwargs": {"path": str(root / "clip")}, "num_inference_steps": 4,
                     "late_step_min": 2, "guidance_scale": 2.0}}
    for key, value in over.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return TrainConfig.model_validate(data)
