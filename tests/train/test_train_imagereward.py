"""ImageReward as ReFL's differentiable reward (tensor preprocessing checked against PIL, gradients,
same value as the evaluation scorer) and ReFL with ImageReward's pre-training-loss regulariser."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instructengine.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from instructengine.train.rewards import ImageRewardReward, clip_preprocess_tensor, load_reward
from instructengine.train.trainer import run_training

from .conftest import make_config
from .paper_data import write_tiny_imagereward


def pil_float_reference(arr: np.ndarray, size: int) -> np.ndarray:
    """CLIP's _transform on an (H, W, 3) float image in [0, 1], written with PIL's float ('F') images so
    nothing is quantised: torchvision Resize(size) (shorter side -> size, longer int(size*long/short),
    PIL bicubic), CenterCrop (round((side - size) / 2)), Normalize(mean, std); returns (3, size, size)."""
    h, w = arr.shape[:2]
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    chans = []
    for c in range(3):
        im = Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC)
        chans.append(np.asarray(im, dtype=np.float64))
    x = np.stack(chans, -1)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    x = x[top:top + size, left:left + size]
    x = (x - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize("shape,size", [((40, 52), 32), ((20, 28), 32), ((45, 32), 32), ((300, 260), 224),
                                        ((32, 32), 32)])
def test_tensor_preprocessing_matches_pil_bicubic(shape, size):
    rng = np.random.default_rng(0)
    h, w = shape
    arr = rng.random((2, h, w, 3)).astype(np.float32)
    got = clip_preprocess_tensor(torch.from_numpy(arr).permute(0, 3, 1, 2), size).numpy()
    assert got.shape == (2, 3, size, size)
    for b in range(2):
        ref = pil_float_reference(arr[b], size)
        # torch's antialiased bicubic (a = -0.5) is PIL's filter: float32 rounding only
        np.testing.assert_allclose(got[b], ref, atol=2e-4, rtol=0)
    # the plain (aliased) bicubic of ImageReward's ReFL script is a different filter when shrinking
    if (h, w) == (40, 52):
        plain = clip_preprocess_tensor(torch.from_numpy(arr).permute(0, 3, 1, 2), size, antialias=False).numpy()
        assert np.abs(plain[0] - pil_float_reference(arr[0], size)).max() > 1e-2


def test_tensor_preprocessing_is_differentiable():
    x = torch.rand(1, 3, 10, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: clip_preprocess_tensor(t, 6), (x,))
    x = torch.rand(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)  # upsampling
    assert torch.autograd.gradcheck(lambda t: clip_preprocess_tensor(t, 6), (x,))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_preprocess_tensor(torch.rand(3, 8, 8), 6)


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    return write_tiny_imagereward(tmp_path_factory.mktemp("imagereward"))


def test_imagereward_reward_equals_the_scorer_and_passes_gradients(imagereward_files):
    from instructengine.scorers import ScorerContext, build_scorer

    reward = load_reward("imagereward", imagereward_files, "cpu")
    assert isinstance(reward, ImageRewardReward) and reward.size == 32
    scorer = build_scorer("imagereward", imagereward_files, ScorerContext())
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # the ViT's size: no resize on either path
    prompts = ["a red car", "two blue dogs", "a red car"]
    expected = scorer.score([Image.fromarray(p) for p in pixels], prompts)
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).requires_grad_(True)
    got = reward(images, prompts)
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-5, rtol=0)
    got.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in list(reward.parts.parameters()) + list(reward.head.parameters()))
    # other sizes are resized on the tensor, differentiably
    small = torch.rand(3, 3, 16, 16, requires_grad=True)
    reward(small, prompts).sum().backward()
    assert small.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        reward(small, prompts[:2])


def _rows(result):
    return [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]


def test_refl_with_imagereward_and_the_pretraining_loss(tiny_root, imagereward_files, tmp_path):
    common = dict(refl__reward="imagereward", refl__reward_kwargs=imagereward_files, batch_size=2, micro_batch_size=2)
    plain = _rows(run_training(make_config(tiny_root, tmp_path / "plain", "sd15", "refl", **common)))
    pre = {"path": str(tiny_root / "data"), "resolution": 16}
    res = run_training(make_config(tiny_root, tmp_path / "pre", "sd15", "refl", refl__pretrain_weight=0.5,
                                   refl__pretrain_data=pre, **common))
    reg = _rows(res)
    assert [r["step"] for r in reg] == [1, 2]
    for r in reg:  # one micro-batch a step: loss = reward loss + weight x denoising MSE
        assert r["pretrain_loss"] > 0 and np.isfinite(r["reward"])
        assert r["loss"] == pytest.approx(r["reward_loss"] + 0.5 * r["pretrain_loss"], rel=1e-6)
    # the reward term comes first and is drawn exactly as without the regulariser
    assert reg[0]["reward_loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)
    assert reg[0]["reward"] == pytest.approx(plain[0]["reward"], rel=1e-6)
    manifest = json.loads((res.output_dir / "manifest.json").read_text())
    assert manifest["extra"]["pretrain_data"]["items"] == 16  # 8 samples -> (x1, y1), (x2, y2)


def test_refl_pretraining_stream_resumes_exactly(tiny_root, tmp_path):
    over = dict(refl__pretrain_weight=1.0, refl__pretrain_data={"path": str(tiny_root / "data"), "resolution": 16},
                checkpoint={"every_n_steps": 100, "resume": "auto"}, max_steps=3)
    full = _rows(run_training(make_config(tiny_root, tmp_path / "full", "sd15", "refl", **over)))
    run_training(make_config(tiny_root, tmp_path / "split", "sd15", "refl", **{**over, "max_steps": 1}))
    split = _rows(run_training(make_config(tiny_root, tmp_path / "split", "sd15", "refl", **over)))
    assert [r["loss"] for r in split] == [r["loss"] for r in full]
    assert [r["pretrain_loss"] for r in split] == [r["pretrain_loss"] for r in full]


def test_pretraining_loss_settings_are_checked(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="needs refl.pretrain_data"):
        make_config(tiny_root, tmp_path, "sd15", "refl", refl__pretrain_weight=1.0)
    cfg = make_config(tiny_root, tmp_path, "sd15", "refl", refl__pretrain_weight=1.0,
                      refl__pretrain_data={"path": str(tiny_root / "data"), "resolution": 32})
    with pytest.raises(ValueError, match="must equal data.resolution=16"):
        run_training(cfg)
