"""The paper-data training YAMLs validate and say what the public baselines' code does."""

from __future__ import annotations

from pathlib import Path

from instructengine.config import load_config
from instructengine.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_pickapic_diffusion_dpo_yaml():
    cfg = load_config(TrainConfig, CONFIGS / "train_sd15_pickapic.yaml")
    assert (cfg.method, cfg.data.source, cfg.data.pickapic.files) == ("diffusion_dpo", "pickapic", ["data/train-*.parquet"])
    # launchers/sd15.sh: 2048 a step, lr 1e-8 x 2048, 500 warm-up steps, 2000 steps, --beta_dpo 5000
    assert cfg.batch_size == 2048 and abs(cfg.optim.lr - 1e-8 * 2048) < 1e-12
    assert (cfg.optim.warmup_steps, cfg.max_steps, cfg.loss.beta) == (500, 2000, 2500)


def test_refl_diffusiondb_yaml():
    cfg = load_config(TrainConfig, CONFIGS / "train_sd15_refl_diffusiondb.yaml")
    assert (cfg.method, cfg.data.source, cfg.data.prompts.column, cfg.data.max_items) == ("refl", "prompts", "prompt", 50000)
    assert cfg.refl.reward == "imagereward" and (cfg.refl.num_inference_steps, cfg.refl.late_step_min) == (40, 30)
    assert cfg.refl.pretrain_weight == 0 and cfg.refl.pretrain_data is None
