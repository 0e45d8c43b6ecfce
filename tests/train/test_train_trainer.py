"""Two training steps per method on tiny SD1.5-like and SDXL-like models; outputs load in diffusers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructengine.train.methods import METHODS
from instructengine.train.trainer import TrainingDiverged, run_training

from .conftest import make_config


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _changed(base_unet_dir: Path, new_unet_dir: Path) -> int:
    base = load_file(str(base_unet_dir / "diffusion_pytorch_model.safetensors"))
    new = load_file(str(new_unet_dir / "diffusion_pytorch_model.safetensors"))
    assert base.keys() == new.keys()
    return sum(not torch.equal(base[k], new[k]) for k in base)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_steps_change_the_unet(tiny_root, tmp_path, kind, method):
    cfg = make_config(tiny_root, tmp_path, kind, method)
    result = run_training(cfg)
    assert result.steps == 2 and result.final_path == tmp_path / "train" / method / "final" / "unet"
    assert _changed(tiny_root / kind / "unet", result.final_path) > 0
    rows = _metrics(result.output_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["lr"] == 1e-3 and r["grad_norm"] > 0 for r in rows)
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["extra"]["steps"] == 2 and manifest["extra"]["accumulation_steps"] == 2
    if method in ("cv_dpo", "four_triple_dpo"):
        keys = {"implicit_acc_x1", "implicit_acc_x2", "reward_margin_x1", "reward_margin_x2", "model_err_winner",
                "model_err_loser", "ref_err_winner", "ref_err_loser"}
        assert keys <= rows[0].keys()
        assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1


def _sd15_pipeline(path: Path, **components):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                   **components)


def _images(pipe, **kw) -> torch.Tensor:
    out = pipe(["a red square"], num_inference_steps=2, height=16, width=16, output_type="pt",
               generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_full_and_lora_outputs_load_in_the_pipeline(tiny_root, tmp_path, kind):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    load = _sd15_pipeline if kind == "sd15" else StableDiffusionXLPipeline.from_pretrained
    base_images = _images(load(tiny_root / kind))

    full = run_training(make_config(tiny_root, tmp_path, kind, "cv_dpo", optim__lr=1e-2))
    pipe = load(tiny_root / kind, unet=UNet2DConditionModel.from_pretrained(full.final_path))
    assert not torch.allclose(_images(pipe), base_images)

    lora = run_training(make_config(tiny_root, tmp_path, kind, "cv_dpo", name="lora", lora__enabled=True,
                                    lora__rank=4, optim__lr=1e-2))
    assert lora.final_path.name == "pytorch_lora_weights.safetensors"
    state = load_file(str(lora.final_path))
    assert state and all(k.startswith("unet.") for k in state)
    pipe = load(tiny_root / kind)
    pipe.load_lora_weights(str(lora.final_path.parent))
    assert not torch.allclose(_images(pipe), base_images)
    assert _metrics(lora.output_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # adapters start at 0


def test_shapes_full_and_lora_outputs_load(tiny_root, tmp_path):
    from diffusers import UNet2DConditionModel

    full = run_training(make_config(tiny_root, tmp_path, "shapes", "cv_dpo"))
    assert _changed(tiny_root / "shapes" / "unet", full.final_path) > 0
    lora = run_training(make_config(tiny_root, tmp_path, "shapes", "diffusion_dpo", lora__enabled=True, lora__rank=2))
    unet = UNet2DConditionModel.from_pretrained(tiny_root / "shapes" / "unet")
    x, t, ehs = torch.randn(1, 3, 16, 16), torch.tensor([500]), torch.randn(1, 8, 16)
    before = unet(x, t, encoder_hidden_states=ehs).sample
    unet.load_lora_adapter(str(lora.final_path.parent), weight_name=lora.final_path.name, prefix="unet")
    assert not torch.allclose(unet(x, t, encoder_hidden_states=ehs).sample, before)


def test_checkpoint_retention_and_complete_run_is_skipped(tiny_root, tmp_path):
    cfg = make_config(tiny_root, tmp_path, "shapes", "sft", max_steps=5, checkpoint__every_n_steps=1,
                      checkpoint__keep_last=2)
    result = run_training(cfg)
    ckpts = sorted(p.name for p in (result.output_dir / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-4", "checkpoint-5"]  # the last step is checkpointed too (at_end)
    assert all((result.output_dir / "checkpoints" / c / "COMPLETE").is_file() for c in ckpts)
    saved = load_file(str(result.output_dir / "checkpoints" / "checkpoint-5" / "trainable_0.safetensors"))
    assert saved  # only trainable tensors are written
    again = run_training(cfg)
    assert again.skipped and again.final_path == result.final_path


def test_divergence_stops_with_the_step_named(tiny_root, tmp_path):
    cfg = make_config(tiny_root, tmp_path, "shapes", "sft", max_steps=4, optim__lr=1e30, optim__max_grad_norm=1e30)
    with pytest.raises(TrainingDiverged, match=r"is (nan|inf|-inf) at optimizer step 2 \(micro-batch 1/2"):
        run_training(cfg)


def test_resume_refuses_a_changed_config(tiny_root, tmp_path):
    cfg = make_config(tiny_root, tmp_path, "shapes", "sft", max_steps=3, checkpoint__every_n_steps=1,
                      checkpoint__resume="auto")
    run_training(cfg)
    (tmp_path / "train" / "sft" / "manifest.json").unlink()  # pretend the run was killed after the checkpoints
    changed = make_config(tiny_root, tmp_path, "shapes", "sft", max_steps=3, checkpoint__resume="auto",
                          optim__lr=5e-4)
    with pytest.raises(ValueError, match="different config"):
        run_training(changed)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_caches_give_the_same_run(tiny_root, tmp_path, kind):
    plain = run_training(make_config(tiny_root, tmp_path / "plain", kind, "cv_dpo"))
    cached = run_training(make_config(tiny_root, tmp_path / "cached", kind, "cv_dpo", data__cache_text_embeddings=True,
                                      data__cache_latents=True))
    a, b = _metrics(plain.output_dir), _metrics(cached.output_dir)
    # the errors themselves (the loss multiplies float32 rounding of 1e-7 by beta=2500)
    for key in ("model_err_winner", "model_err_loser", "ref_err_winner", "ref_err_loser"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5), key


def test_bf16_checkpointing_v_prediction_run(tiny_root, tmp_path):
    cfg = make_config(tiny_root, tmp_path, "sdxl", "cv_dpo", mixed_precision="bf16", gradient_checkpointing=True,
                      model__prediction_type="v_prediction", lora__enabled=True, lora__rank=2)
    result = run_training(cfg)
    assert all(math.isfinite(r["loss"]) for r in _metrics(result.output_dir))
    state = load_file(str(result.final_path))
    assert all(v.dtype == torch.float32 for v in state.values())  # save_dtype float32
    lora_b = [v for k, v in state.items() if "lora_B" in k or "lora.up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: gradients flowed


# Adam's epsilon well above float rounding: at the default 1e-8 its first steps divide each gradient
# element by its own magnitude, so rounding in a near-zero element (channels-last picks other convolution
# kernels) flips that weight's update by up to lr (seen: weights 1.2% apart and errors 2.6e-5 apart at step 2
# on an Intel Xeon, within bounds on an AMD EPYC); at 1e-3 a tiny gradient makes a tiny update
EPS = 1e-3


@pytest.mark.parametrize("option", [{"optim__fused": True}, {"channels_last": True}], ids=["fused_adamw", "channels_last"])
def test_speed_options_leave_the_run_unchanged(tiny_root, tmp_path, option):
    """Fused AdamW and channels-last U-Nets are speed options: the same losses and the same trained
    weights as the default run, up to float rounding."""
    plain = run_training(make_config(tiny_root, tmp_path / "plain", "sd15", "cv_dpo", optim__lr=1e-2, optim__adam_eps=EPS))
    fast = run_training(make_config(tiny_root, tmp_path / "fast", "sd15", "cv_dpo", optim__lr=1e-2, optim__adam_eps=EPS,
                                    **option))
    a, b = _metrics(plain.output_dir), _metrics(fast.output_dir)
    assert len(a) == len(b) >= 2
    for key in ("model_err_winner", "model_err_loser", "ref_err_winner", "ref_err_loser"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-5), key
    before = load_file(str(tiny_root / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"))
    w0 = load_file(str(plain.final_path / "diffusion_pytorch_model.safetensors"))
    w1 = load_file(str(fast.final_path / "diffusion_pytorch_model.safetensors"))
    moved = torch.cat([(w0[k] - before[k]).flatten() for k in w0]).norm().item()
    apart = torch.cat([(w0[k] - w1[k]).flatten() for k in w0]).norm().item()
    assert moved > 1e-3  # the run trained, so equal weights mean equal updates
    # 0.2% (seen: 1.7e-4 with channels-last on an Intel Xeon, 2.8e-5 fused)
    assert apart < 2e-3 * moved
