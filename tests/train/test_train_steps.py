"""The fused forward, caption dropout, SDXL micro-conditioning and ReFL's timestep handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instructengine.train.config import DataConfig, ModelConfig, ReflConfig
from instructengine.train.data import ItemDataset, build_items, collate_items
from instructengine.train.losses import cross_validation_dpo_loss
from instructengine.train.models import load_adapter
from instructengine.train.steps import (
    Encoder,
    caption_dropout_mask,
    combination_errors,
    predicted_original,
    refl_loss,
    training_target,
)


def _adapter(root: Path, kind: str, **kw):
    a = load_adapter(ModelConfig(kind=kind, path=str(root / kind), **kw))
    return a.to("cpu", torch.float32, torch.float32)


def _batch(root: Path, layout: str, n: int = 3) -> dict:
    cfg = DataConfig(path=str(root / "data"), resolution=16)
    items, _, _ = build_items("samples", layout, cfg)
    ds = ItemDataset(items, cfg, seed=0)
    return collate_items([ds[(i, 0)] for i in range(n)])


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "shapes"])
def test_fused_forward_equals_eight_separate_calls(tiny_root, kind):
    adapter = _adapter(tiny_root, kind)
    batch = _batch(tiny_root, "quad")
    enc = Encoder(adapter)
    out = []
    for fused in (True, False):
        g = torch.Generator().manual_seed(7)
        out.append(combination_errors(adapter, enc, adapter.unet, adapter.unet, batch, "quad", g, fused=fused))
    (m1, r1), (m2, r2) = out
    assert m1.shape == (3, 4)
    torch.testing.assert_close(m1, m2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=1e-6)


def test_caption_dropout_mask_never_empties_a_two_instruction_item():
    g = torch.Generator().manual_seed(0)
    mask = caption_dropout_mask(10_000, 2, 0.9, g)
    assert not mask.all(dim=1).any()
    assert mask.any(dim=1).float().mean() > 0.9  # still drops (one of the two) almost always
    single = caption_dropout_mask(1000, 1, 1.0, g)
    assert single.all()  # one-instruction items (pairs) may be fully unconditional


def test_caption_dropout_never_makes_a_cv_sample_constant(tiny_root):
    adapter = _adapter(tiny_root, "shapes")
    batch = _batch(tiny_root, "quad", n=4)
    enc = Encoder(adapter)
    g = torch.Generator().manual_seed(1)
    model, ref = combination_errors(adapter, enc, adapter.unet, None, batch, "quad", g, caption_dropout=1.0)
    # if both instructions were dropped, (x1,y1) and (x2,y1) would be the same input: equal errors
    assert ((model[:, 0] - model[:, 3]).abs() > 0).all()
    assert ((model[:, 1] - model[:, 2]).abs() > 0).all()
    # and the CV loss of a perturbed policy still has a gradient
    model = model.detach().requires_grad_(True)
    cross_validation_dpo_loss(model, model.detach() + 0.01, 100.0).sum().backward()
    assert (model.grad.abs().sum(dim=1) > 0).all()


def test_sdxl_micro_conditioning_follows_each_image(tiny_root):
    adapter = _adapter(tiny_root, "sdxl")
    batch = _batch(tiny_root, "quad", n=2)
    batch["micro"] = [torch.tensor([[11.0, 12, 1, 2, 16, 16], [13, 14, 3, 4, 16, 16]]),
                      torch.tensor([[21.0, 22, 5, 6, 16, 16], [23, 24, 7, 8, 16, 16]])]
    seen = {}

    def recording_unet(sample, t, **kwargs):
        seen.update(kwargs)
        return adapter.unet(sample, t, **kwargs)

    combination_errors(adapter, Encoder(adapter), recording_unet, None, batch, "quad", torch.Generator().manual_seed(0))
    time_ids = seen["added_cond_kwargs"]["time_ids"]
    y1, y2 = batch["micro"]
    torch.testing.assert_close(time_ids, torch.cat([y1, y2, y2, y1]))  # [y1, y2, y2, y1] combo order
    assert seen["added_cond_kwargs"]["text_embeds"].shape == (8, 16)
    null = adapter.null_text(3)
    assert all((v == 0).all() for v in null.values())  # force_zeros_for_empty_prompt


def test_v_prediction_target_is_the_velocity(tiny_root):
    adapter = _adapter(tiny_root, "sd15", prediction_type="v_prediction")
    sched = adapter.noise_scheduler
    assert sched.config.prediction_type == "v_prediction"
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    torch.testing.assert_close(training_target(sched, x0, noise, t), sched.get_velocity(x0, noise, t))
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(sched, x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_original_uses_the_timestep_value(prediction_type):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(40)
    k = 35
    t = sched.timesteps[k]
    assert int(t) != k  # value and index differ: 'leading' spacing puts index 35 at t=100
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    expected = sched.step(out, t, x).pred_original_sample
    torch.testing.assert_close(predicted_original(x, out, t, sched.alphas_cumprod, prediction_type), expected)
    wrong = predicted_original(x, out, k, sched.alphas_cumprod, prediction_type)  # the public-code bug
    assert not torch.allclose(wrong, expected)


def test_refl_calls_the_unet_with_timestep_values_and_backpropagates(tiny_root):
    from instructengine.train.rewards import load_reward

    adapter = _adapter(tiny_root, "sd15")
    cfg = ReflConfig(num_inference_steps=5, late_step_min=3, guidance_scale=2.0)
    calls = []

    def recording(sample, t, **kwargs):
        calls.append((int(t.reshape(-1)[0]), torch.is_grad_enabled()))
        return adapter.unet(sample, t, **kwargs)

    reward = load_reward("clip", {"path": str(tiny_root / "clip")}, "cpu")
    loss, metrics = refl_loss(adapter, Encoder(adapter), recording, ["a red square", "a blue bar"], reward, cfg, 16,
                              torch.Generator().manual_seed(0))
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(adapter.noise_scheduler.config)
    sched.set_timesteps(5)
    k = int(metrics["refl_step_index"])
    assert 3 <= k <= 4
    assert [t for t, _ in calls] == [int(x) for x in sched.timesteps[: k + 1]]
    assert [g for _, g in calls] == [False] * k + [True]  # only the late step carries gradients
    assert metrics["refl_timestep"] == float(sched.timesteps[k])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.unet.parameters())
