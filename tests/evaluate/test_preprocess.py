"""Preprocessing against hand-computed tensors (torchvision / transformers / HPSv2 semantics)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instructengine.scorers.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    center_crop,
    letterbox,
    resize_shortest_side,
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
    out = letterbox(img, 4)
    assert out.size == (4, 4)
    arr = np.asarray(out)
    assert (arr[0] == 0).all() and (arr[3] == 0).all()
    assert (arr[1:3] == [200, 100, 50]).all()
    # odd padding: 6x3 -> 4x2 (round(3*4/6)=2); pad 2 -> 1 before, 1 after; 5x3 -> 4x2 (round(2.4)=2)
    assert letterbox(Image.new("RGB", (5, 3), (9, 9, 9)), 4).size == (4, 4)
    tall = np.asarray(letterbox(Image.new("RGB", (3, 9), (255, 255, 255)), 9))  # scale 1: pad 6 columns -> 3 + 3
    assert (tall[:, :3] == 0).all() and (tall[:, 3:6] == 255).all() and (tall[:, 6:] == 0).all()


def test_transform_values_hand_computed():
    img = Image.new("RGB", (8, 4), (255, 0, 51))
    t = ImageTransform(size=4, mode="letterbox")
    x = t([img]).numpy()
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    pad = -MEAN / STD
    content = (np.array([1.0, 0.0, 0.2], dtype=np.float32) - MEAN) / STD
    np.testing.assert_allclose(x[0, :, 0, 0], pad, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 1, 2], content, rtol=1e-6)
    np.testing.assert_allclose(x[0, :, 3, 3], pad, rtol=1e-6)

    crop = ImageTransform(size=3, mode="crop", crop_rounding="torchvision")([columns_image(6, 3)]).numpy()
    expected_cols = (np.array([20, 30, 40], dtype=np.float32) / 255.0 - MEAN[0]) / STD[0]
    np.testing.assert_allclose(crop[0, 0, 1], expected_cols, rtol=1e-6)


def test_crop_transform_resizes_then_crops_square():
    img = Image.new("RGB", (64, 32), (10, 20, 30))
    x = ImageTransform(size=16)([img, img]).numpy()
    assert x.shape == (2, 3, 16, 16)
    # a constant image stays constant through bicubic resize and crop
    np.testing.assert_allclose(x[0, :, 5, 5], (np.array([10, 20, 30]) / 255.0 - MEAN) / STD, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        ImageTransform(size=16)([])
