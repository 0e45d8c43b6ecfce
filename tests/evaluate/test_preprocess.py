"""Preprocessing against hand-computed tensors and against transcriptions of the official transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import official_reference as official
from instructengine.scorers.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    center_crop,
    letterbox,
    resize_shortest_side,
    to_normalized_array,
)

MEAN = np.array(OPENAI_CLIP_MEAN, dtype=np.float32)
STD = np.array(OPENAI_CLIP_STD, dtype=np.float32)


def columns_image(width: int, height: int) -> Image.Image:
    """Column x has the value 10 * x in every channel: crops are readable from the pixel values."""
    arr = np.tile((np.arange(width, dtype=np.uint8) * 10)[None, :, None], (height, 1, 3))
    return Image.fromarray(arr, "RGB")


def test_resize_shortest_side_sizes_follow_torchvision():
    assert resize_shortest_side(Image.new("RGB", (300, 200)), 100).size == (150, 100)
    assert resize_shortest_side(Image.new("RGB", (200, 301)), 100).size == (100, 150)  # int(100*301/200)=150
    img = Image.new("RGB", (64, 80))
    assert resize_shortest_side(img, 64) is img


def test_center_crop_rounding_torchvision_vs_transformers():
    img = columns_image(6, 3)  # margin 3 -> torchvision round(1.5)=2, transformers 3//2=1
    tv = np.asarray(center_crop(img, 3, "torchvision"))[0, :, 0]
    hf = np.asarray(center_crop(img, 3, "floor"))[0, :, 0]
    assert tv.tolist() == [20, 30, 40]
    assert hf.tolist() == [10, 20, 30]
    with pytest.raises(ValueError, match="smaller than the crop"):
        center_crop(img, 4)
    with pytest.raises(ValueError, match="rounding"):
        center_crop(img, 3, "ceil")  # type: ignore[arg-type]


def test_letterbox_pads_short_side_with_zeros_centered():
    img = Image.new("RGB", (8, 4), (200, 100, 50))  # -> 4x2 content, 1 row of padding above and below
    out = letterbox(img, 4).numpy()
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    assert (out[:, 0] == 0).all() and (out[:, 3] == 0).all()
    # a constant image stays constant through the (normalised-kernel) bicubic resize
    np.testing.assert_allclose(out[:, 1:3], np.broadcast_to(np.array([200, 100, 50])[:, None, None] / 255.0, (3, 2, 4)), atol=1e-6)
    # odd padding: 5x3 -> 4x2 (round(3*4/5)=round(2.4)=2); pad 2 -> 1 before, 1 after
    assert letterbox(Image.new("RGB", (5, 3), (9, 9, 9)), 4).shape == (3, 4, 4)
    tall = letterbox(Image.new("RGB", (3, 9), (255, 255, 255)), 9).numpy()  # scale 1: pad 6 columns -> 3 + 3
    assert (tall[:, :, :3] == 0).all() and (tall[:, :, 3:6] == 1).all() and (tall[:, :, 6:] == 0).all()


def test_transform_values_hand_computed():
    img = Image.new("RGB", (8, 4), (255, 0, 51))
    t = ImageTransform(size=4, mode="letterbox")
    x = t([img]).numpy()
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    pad = -MEAN / STD
    content = (np.array([1.0, 0.0, 0.2], dtype=np.float32) - MEAN) / STD
    np.testing.assert_allclose(x[0, :, 0, 0], pad, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 1, 2], content, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x[0, :, 3, 3], pad, rtol=1e-6)

    crop = ImageTransform(size=3, mode="crop", crop_rounding="torchvision")([columns_image(6, 3)]).numpy()
    expected_cols = (np.array([20, 30, 40], dtype=np.float32) / 255.0 - MEAN[0]) / STD[0]
    np.testing.assert_allclose(crop[0, 0, 1], expected_cols, rtol=1e-6)


def _random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


#: odd sizes (width, height): odd margins for the crops, odd padding and non-integer scales for the letterbox
ODD_SIZES = [(37, 53), (61, 29), (45, 45), (225, 100), (100, 301), (511, 333)]


@pytest.mark.parametrize("antialias", [True, False])
def test_hpsv2_letterbox_matches_the_official_transform(antialias):
    images = _random_images(ODD_SIZES)
    for size in (32, 224):
        ours = ImageTransform(size=size, mode="letterbox", antialias=antialias)(images)
        for img, got in zip(images, ours):
            ref = official.hpsv2_val_transform(img, size, antialias=antialias)
            assert got.shape == ref.shape == (3, size, size)
            assert (got - ref).abs().max().item() < 1e-6, (img.size, size)


def test_hpsv2_float_resize_is_not_the_uint8_pil_resize():
    """Why the letterbox runs on tensors: PIL's uint8 resize differs from the official float resize."""
    img = _random_images([(511, 333)])[0]
    ref = official.hpsv2_val_transform(img, 224)
    w, h = img.size
    scale = 224 / max(w, h)
    small = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    canvas = Image.new("RGB", (224, 224))
    canvas.paste(small, ((224 - small.size[0]) // 2, (224 - small.size[1]) // 2))
    pil_way = torch.from_numpy(to_normalized_array(canvas, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    assert (pil_way - ref).abs().max().item() > 1e-2
    # and the two antialias settings differ too (torchvision < 0.17 vs >= 0.17)
    assert (official.hpsv2_val_transform(img, 224, antialias=False) - ref).abs().max().item() > 1e-2


def test_crop_transforms_match_the_official_transforms():
    images = _random_images(ODD_SIZES, seed=1)
    for size in (32, 224):
        clip_t = ImageTransform(size=size, mode="crop", crop_rounding="torchvision")
        hf_t = ImageTransform(size=size, mode="crop", crop_rounding="floor")
        for img, got_clip, got_hf in zip(images, clip_t(images), hf_t(images)):
            assert (got_clip - official.clip_transform(img, size)).abs().max().item() < 1e-6, (img.size, size)
            assert (got_hf - official.hf_clip_image_processor(img, size)).abs().max().item() < 1e-6, (img.size, size)
    # the odd margins make the two roundings differ somewhere: each official transform is needed
    img = images[1]  # 61x29 -> 471x224: margin 247
    assert (clip_t([img])[0] - official.hf_clip_image_processor(img, 224)).abs().max().item() > 1e-3


def test_crop_transform_resizes_then_crops_square():
    img = Image.new("RGB", (64, 32), (10, 20, 30))
    x = ImageTransform(size=16)([img, img]).numpy()
    assert x.shape == (2, 3, 16, 16)
    # a constant image stays constant through bicubic resize and crop
    np.testing.assert_allclose(x[0, :, 5, 5], (np.array([10, 20, 30]) / 255.0 - MEAN) / STD, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        ImageTransform(size=16)([])
