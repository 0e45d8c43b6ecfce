"""The GPU benchmark script on the CPU: its transcribed architectures, its wheel bootstrap, its tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "run_gpu_bench.py"


def load():
    spec = importlib.util.spec_from_file_location("run_gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_configs_have_the_published_parameter_counts():
    """The configs transcribed into configs.json build the official architectures: parameter counts of
    stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0 as published (built on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfgs = load().load_configs(tiny=False)
    with torch.device("meta"):
        assert _count(UNet2DConditionModel(**cfgs["sd15"]["unet"])) == 859_520_964
        assert _count(UNet2DConditionModel(**cfgs["sdxl"]["unet"])) == 2_567_463_684
        assert _count(AutoencoderKL(**cfgs["sdxl"]["vae"])) == _count(AutoencoderKL(**cfgs["sd15"]["vae"])) == 83_653_863
        assert _count(CLIPTextModel(CLIPTextConfig(**cfgs["sd15"]["text_encoder"]))) == 123_060_480
        assert _count(CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["sdxl"]["text_encoder_2"]))) == 694_659_840
    assert cfgs["sd15"]["unet"]["sample_size"] == 64 and cfgs["sdxl"]["unet"]["sample_size"] == 128
    assert cfgs["sd15"]["resolution"] == 512 and cfgs["sdxl"]["resolution"] == 1024


def test_bootstrap_unpacks_a_missing_pure_python_wheel(tmp_path, monkeypatch):
    mod = load()
    wheel = tmp_path / "ie_fake_dependency-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ie_fake_dependency/__init__.py", "VALUE = 42\n")
    other = tmp_path / "ie_fake_binary-1.0-cp27-cp27m-manylinux2014_x86_64.whl"  # not for this Python
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("ie_fake_binary/__init__.py", "")
    monkeypatch.setattr(mod, "WHEELS", {"ie_fake_dependency": "ie_fake_dependency", "ie_fake_binary": "ie_fake_binary"})
    monkeypatch.setattr(mod.tempfile, "gettempdir", lambda: str(tmp_path / "site"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert mod.bootstrap(tmp_path) == [wheel.name]
    import ie_fake_dependency

    assert ie_fake_dependency.VALUE == 42
    assert importlib.util.find_spec("ie_fake_binary") is None
    sys.modules.pop("ie_fake_dependency", None)


def _check(result: dict, models: list[str], variants: list[str]) -> None:
    assert result["peak"]["tflops"] > 0 and result["device"] == "cpu"
    for kind in models:
        train = result["train"][kind]
        assert set(train["variants"]) == set(variants), train
        for name, row in train["variants"].items():
            assert row["median_step_s"] > 0 and row["samples_per_s"] > 0, (kind, name)
            assert row["flops_counted"] > 0 and row["mfu"] > 0, (kind, name)
        assert "AttnProcessor2_0" in train["attention_processors"]
    gen = result["generate"]["sdxl"]
    assert gen["ours"]["images_per_s"] > 0 and gen["plain_best_images_per_s"] > 0 and gen["ours_vs_plain_best"] > 0
    assert set(result["targets"]) >= {"sdxl_fused_mfu", "sdxl_fused_vs_example_per_sample", "sdxl_lora_fits_80GB",
                                      "sdxl_generation_vs_plain_best"}


def test_gpu_script_tiny_on_cpu(tmp_path):
    """The script's every path (LoRA and full, fused / example as written / checkpointed, FLOP counting,
    generation through our generator and the plain pipeline) on the tiny SDXL twin."""
    out = tmp_path / "gpu.json"
    variants = ["lora_fused", "lora_example", "lora_fused_gc", "lora_fused_channels_last", "full_fused"]
    result = load().main(["--tiny", "--models", "sdxl", "--train-variants", ",".join(variants), "--gen-batches", "1",
                          "--out", str(out)])
    assert json.loads(out.read_text())["targets"] == result["targets"]
    _check(result, ["sdxl"], variants)
    gc_row = result["train"]["sdxl"]["variants"]["lora_fused_gc"]
    # checkpointing recomputes the forward: more FLOPs executed, the same model FLOPs charged
    assert gc_row["flops_counted"] > result["train"]["sdxl"]["variants"]["lora_fused"]["flops_counted"]
    assert gc_row["model_flops_per_step_T"] == result["train"]["sdxl"]["variants"]["lora_fused"]["model_flops_per_step_T"]


@pytest.mark.slow
def test_gpu_script_tiny_on_cpu_everything(tmp_path):
    mod = load()
    result = mod.main(["--tiny", "--out", str(tmp_path / "gpu.json")])
    _check(result, ["sd15", "sdxl"], list(mod.TRAIN_VARIANTS))
