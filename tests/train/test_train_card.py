"""Every trained output has a model card the Hub tooling reads, its weights still load with diffusers,
every file a training writes is group-readable, and precisions the machine cannot run are refused."""

import os
import stat

import pytest
import torch
from huggingface_hub import ModelCard

from instructengine.config import ConfigError, load_config
from instructengine.errors import DeviceError
from instructengine.train.card import add_evaluation, base_model_id, card_license
from instructengine.train.config import TrainConfig
from instructengine.train.trainer import run_training

from .conftest import make_config


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _want() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_full_unet_output_card_loading_and_file_modes(tiny_root, tmp_path):
    from diffusers import UNet2DConditionModel

    cfg = make_config(tiny_root, tmp_path, "sd15", "cv_dpo", seed=7, optim__lr=3e-4, checkpoint__every_n_steps=1,
                      card={"license": "cc-by-nc-4.0", "datasets": ["someone/instructengine-sd15"]})
    result = run_training(cfg)
    final = result.output_dir / "final"
    card = ModelCard.load(final / "README.md")
    data = card.data
    assert data.library_name == "diffusers" and data.license == "cc-by-nc-4.0"
    assert data.datasets == ["someone/instructengine-sd15"]
    assert {"text-to-image", "diffusion-dpo", "instructengine", "cv-dpo"} <= set(data.tags)
    assert data.base_model is None  # a local base folder is no Hub reference
    body = card.text
    for line in ("| learning rate | 0.0003 |", "| batch size (items per optimizer step) | 4 |", "| optimizer steps | 2 |",
                 "| mixed precision | no |", "| seed | 7 |", "training items read: 8; used: 8"):
        assert line in body, line
    assert str(tiny_root) not in card.content and str(tmp_path) not in card.content
    # diffusers still loads the U-Net folder, with the trained weights
    unet = UNet2DConditionModel.from_pretrained(final / "unet")
    base = UNet2DConditionModel.from_pretrained(tiny_root / "sd15", subfolder="unet")
    diffs = [float((a - b).abs().max()) for a, b in zip(unet.state_dict().values(), base.state_dict().values())]
    assert max(diffs) > 0
    # every file of the run (weights, checkpoints, card, metrics, manifest) is group-readable
    files = [p for p in result.output_dir.rglob("*") if p.is_file()]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in files)
    assert any(p.name == "trainable_0.safetensors" for p in files)
    bad = {str(p.relative_to(result.output_dir)): oct(_mode(p)) for p in files if _mode(p) != _want()}
    assert not bad


def test_lora_output_card_and_evaluation_section(tiny_root, tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg = make_config(tiny_root, tmp_path, "sd15", "diffusion_dpo", lora={"enabled": True, "rank": 2})
    final = run_training(cfg).output_dir / "final"
    assert _mode(final / "pytorch_lora_weights.safetensors") == _want()
    card = ModelCard.load(final / "README.md")
    assert "lora" in card.data.tags and "| LoRA rank | 2 |" in card.text and card.data.license == "other"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_root / "sd15", safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(final))  # the README beside the weights does not disturb loading
    path = add_evaluation(final, {"ImageReward": 0.5, "HPSv2": 0.27}, benchmark="drawbench")
    add_evaluation(final, {"ImageReward": 0.61}, benchmark="drawbench")  # a re-evaluation replaces the numbers
    add_evaluation(final, {"PickScore": 21.5}, benchmark="partiprompts")
    card = ModelCard.load(path)
    assert card.data.instructengine_eval == {"drawbench": {"ImageReward": 0.61}, "partiprompts": {"PickScore": 21.5}}
    assert card.text.count("## Evaluation") == 1 and "| ImageReward | 0.6100 |" in card.text
    assert "Not evaluated yet" not in card.text and "## Use" in card.text and "## Training settings" in card.text


def test_base_model_and_license_of_hub_models(tmp_path):
    cfg = TrainConfig.model_validate({"model": {"kind": "sdxl"}})
    assert base_model_id(cfg) == "stabilityai/stable-diffusion-xl-base-1.0" and card_license(cfg) == "openrail++"
    cfg = TrainConfig.model_validate({"model": {"kind": "sd15", "path": "someone/custom-sd"}})
    assert base_model_id(cfg) == "someone/custom-sd" and card_license(cfg) == "other"
    cfg = TrainConfig.model_validate({"model": {"kind": "sd15", "path": str(tmp_path)}})
    assert base_model_id(cfg) is None


def test_precision_the_machine_cannot_run_is_refused_before_work(tmp_path, monkeypatch):
    # fp16 autocast on CPU fails at the first matmul (c10::Half != float); bf16 runs (train_shapes.yaml)
    with pytest.raises(ConfigError, match=r"mixed_precision='fp16' needs a CUDA device.*use mixed_precision=bf16"):
        load_config(TrainConfig, None, ["mixed_precision=fp16", "device=cpu"])
    cfg = load_config(TrainConfig, None, ["mixed_precision=fp16", f"run_dir={tmp_path}"])  # device auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="mixed_precision='fp16' needs a CUDA device"):
        run_training(cfg)
    assert not (tmp_path / "train").exists()  # refused before any folder was made
    load_config(TrainConfig, None, ["mixed_precision=bf16", "device=cpu"]).check_runnable()


def test_yaml_no_is_mixed_precision_no(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("mixed_precision: no\n")  # YAML 1.1 reads it as false
    assert load_config(TrainConfig, path).mixed_precision == "no"
    assert load_config(TrainConfig, None, ["mixed_precision=no"]).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(TrainConfig, None, ["mixed_precision=yes"])
