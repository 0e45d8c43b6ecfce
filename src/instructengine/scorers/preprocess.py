"""Image preprocessing for the scorers, written out with PIL + numpy so each step is visible and testable.

The official scorer code uses torchvision transforms (CLIP, BLIP, ImageReward, HPSv2) or the
transformers ``CLIPImageProcessor`` (PickScore, ICT/HP). On PIL images both resize with PIL's own
bicubic filter, so the same results come from PIL directly; what differs between them, and is kept
here as a parameter, is how the centre crop rounds an odd margin:

* torchvision ``CenterCrop``: ``top = int(round((h - th) / 2))`` (Python rounding, half to even);
* transformers ``center_crop``: ``top = (h - th) // 2``.

``letterbox`` is HPSv2's ``ResizeMaxSize`` (its open_clip fork, ``transform.py``): the longer side
is resized to ``size`` and the shorter side padded with zeros, centred, instead of centre-cropping.

All functions take RGB ``PIL.Image`` objects; images are decoded and converted to RGB once, by the
caller, before any scorer sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CropRounding = Literal["torchvision", "floor"]
ResizeMode = Literal["crop", "letterbox"]


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic), keeping the aspect ratio.

    The longer side is ``int(size * long / short)``, as torchvision's ``Resize(int)`` and the
    transformers ``shortest_edge`` resize compute it.
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), resample=Image.BICUBIC)


def center_crop(image: Image.Image, size: int, rounding: CropRounding = "torchvision") -> Image.Image:
    """Crop the central ``size`` x ``size`` square.

    Raises:
        ValueError: when the image is smaller than ``size`` on either side (resize it first), or
            ``rounding`` is not one of "torchvision", "floor".
    """
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"center_crop: image {w}x{h} is smaller than the crop {size}x{size}; resize it first")
    if rounding == "torchvision":
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    elif rounding == "floor":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        raise ValueError(f"center_crop: rounding {rounding!r} is not one of 'torchvision', 'floor'")
    return image.crop((left, top, left + size, top + size))


def letterbox(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """HPSv2's ``ResizeMaxSize``: longer side resized to ``size`` (bicubic), the rest padded, centred.

    New side lengths are ``round(side * size / max(h, w))``; the padding is split as
    ``pad // 2`` before and ``pad - pad // 2`` after. One deliberate difference from the original:
    an image whose longer side already equals ``size`` but which is not square is padded here,
    where the original returns it unpadded (and the model then fails on a non-square input).
    """
    w, h = image.size
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        image = image.resize((new_w, new_h), resample=Image.BICUBIC)
        w, h = new_w, new_h
    if w == size and h == size:
        return image
    pad_w, pad_h = size - w, size - h
    canvas = Image.new(image.mode, (size, size), color=(fill,) * len(image.getbands()))
    canvas.paste(image, (pad_w // 2, pad_h // 2))
    return canvas


def to_normalized_array(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW in [0, 1] (torchvision ``ToTensor``), then ``(x - mean) / std``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageTransform:
    """One scorer's preprocessing: geometry (crop or letterbox), size, crop rounding, mean and std.

    Frozen and hashable, so that two scorers with the same transform share the pixel tensors
    (and, on the same model, the features) of a batch.
    """

    size: int
    mode: ResizeMode = "crop"
    crop_rounding: CropRounding = "torchvision"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def geometry(self, image: Image.Image) -> Image.Image:
        if self.mode == "crop":
            return center_crop(resize_shortest_side(image, self.size), self.size, self.crop_rounding)
        if self.mode == "letterbox":
            return letterbox(image, self.size)
        raise ValueError(f"ImageTransform.mode {self.mode!r} is not one of 'crop', 'letterbox'")

    def __call__(self, images: Sequence[Image.Image]):
        """Return a float32 torch tensor of shape (N, 3, size, size)."""
        import torch

        if len(images) == 0:
            raise ValueError("ImageTransform: got an empty list of images")
        arrays = [to_normalized_array(self.geometry(im), self.mean, self.std) for im in images]
        return torch.from_numpy(np.stack(arrays))
