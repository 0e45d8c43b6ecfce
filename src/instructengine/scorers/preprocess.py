"""Image preprocessing for the scorers, written out step by step so each step is visible and testable.

Two families of official transforms are reproduced:

* **Resize the shorter side, centre-crop** (CLIP's ``_transform``, used by the CLIP score, the
  aesthetic predictor, BLIP and ImageReward; the transformers ``CLIPImageProcessor``, used by
  PickScore and ICT/HP). Both resize the *uint8 PIL image* with PIL's bicubic filter (torchvision's
  ``Resize`` on a PIL image calls ``PIL.Image.resize``), so the same pixels come from PIL directly.
  What differs between them, and is kept here as a parameter, is how the centre crop rounds an odd
  margin:

  - torchvision ``CenterCrop``: ``top = int(round((h - th) / 2))`` (Python rounding, half to even);
  - transformers ``center_crop``: ``top = (h - th) // 2``.

* **Letterbox** (HPSv2's ``image_transform(..., resize_longest_max=True)`` in its open_clip fork,
  ``hpsv2/src/open_clip/transform.py``): ``ToTensor`` *first*, then ``ResizeMaxSize`` on the float
  tensor — torchvision's tensor resize, i.e. ``torch.nn.functional.interpolate(mode="bicubic",
  align_corners=False, antialias=...)`` with no clamping — then zero padding to a square, then
  ``Normalize``. This is not the same as resizing the uint8 PIL image (PIL rounds and clips to
  uint8 after resizing; torch's antialiased bicubic keeps floats), so it is done on tensors here.
  torchvision's default ``antialias`` changed in 0.17 (tensors: off before, on from 0.17); the
  ``antialias`` field chooses which behaviour is reproduced (default on, torchvision >= 0.17).

All functions take RGB ``PIL.Image`` objects; images are decoded and converted to RGB once, by the
caller, before any scorer sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CropRounding = Literal["torchvision", "floor"]
ResizeMode = Literal["crop", "letterbox"]


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (PIL bicubic), keeping the aspect ratio.

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


def to_unit_tensor(image: Image.Image) -> "torch.Tensor":
    """torchvision ``ToTensor``: uint8 HWC RGB -> float32 CHW in [0, 1]."""
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def letterbox(image: Image.Image, size: int, antialias: bool = True, fill: float = 0.0) -> "torch.Tensor":
    """HPSv2's ``ToTensor`` + ``ResizeMaxSize``: a float32 (3, size, size) tensor, not yet normalised.

    The longer side is resized to ``size`` on the float tensor (bicubic, ``align_corners=False``,
    ``antialias`` as chosen, values not clipped); new side lengths are ``round(side * size /
    max(h, w))``; the shorter side is padded with ``fill``, ``pad // 2`` before and ``pad - pad // 2``
    after. One deliberate difference from the original: an image whose longer side already equals
    ``size`` but which is not square is padded here, where the original returns it unpadded (and the
    model then fails on a non-square input).
    """
    import torch.nn.functional as F

    x = to_unit_tensor(image)
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)[0]
        h, w = new_h, new_w
    pad_h, pad_w = size - h, size - w
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return x


def to_normalized_array(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW in [0, 1] (torchvision ``ToTensor``), then ``(x - mean) / std``."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageTransform:
    """One scorer's preprocessing: geometry (crop or letterbox), size, crop rounding, antialias, mean, std.

    Frozen and hashable, so that two scorers with the same transform share the pixel tensors
    (and, on the same model, the features) of a batch. ``antialias`` applies to ``letterbox`` only
    (the crop mode resizes with PIL, which always antialiases).
    """

    size: int
    mode: ResizeMode = "crop"
    crop_rounding: CropRounding = "torchvision"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    antialias: bool = True

    def one(self, image: Image.Image) -> "torch.Tensor":
        """One image -> normalised float32 tensor (3, size, size).

        Raises:
            ValueError: ``mode`` is not "crop" or "letterbox".
        """
        import torch

        if self.mode == "crop":
            crop = center_crop(resize_shortest_side(image, self.size), self.size, self.crop_rounding)
            return torch.from_numpy(to_normalized_array(crop, self.mean, self.std))
        if self.mode == "letterbox":
            x = letterbox(image, self.size, antialias=self.antialias)
            mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
            return (x - mean) / std
        raise ValueError(f"ImageTransform.mode {self.mode!r} is not one of 'crop', 'letterbox'")

    def __call__(self, images: Sequence[Image.Image]) -> "torch.Tensor":
        """Return a float32 torch tensor of shape (N, 3, size, size).

        Raises:
            ValueError: an empty list of images.
        """
        import torch

        if len(images) == 0:
            raise ValueError("ImageTransform: got an empty list of images")
        return torch.stack([self.one(im) for im in images])
