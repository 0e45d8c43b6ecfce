"""The one loader of trained U-Nets, shared by generation, evaluation, training exports and diagnostics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["load_trained_unet"]


def load_trained_unet(base: Any, path: str | Path, dtype: Any = None) -> Any:
    """A trained U-Net: a diffusers U-Net folder, a pipeline folder with ``unet/``, or LoRA weights
    (a ``.safetensors`` file, or a folder with ``pytorch_lora_weights.safetensors``) fused into the
    base U-Net.

    ``base`` is the base U-Net (a loaded ``UNet2DConditionModel``, or its folder / a pipeline folder
    with ``unet/``); it is read only for LoRA weights. ``dtype`` casts the result (None: as saved).

    Raises:
        FileNotFoundError: ``path`` is none of these.
    """
    from diffusers import UNet2DConditionModel

    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        p = p / "unet"
    unet = None
    if (p / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(p)
    else:
        lora = p if p.suffix == ".safetensors" else p / "pytorch_lora_weights.safetensors"
        if not lora.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a trained U-Net: expected a diffusers U-Net folder (config.json + weights), a "
                "pipeline folder with unet/, or LoRA weights (pytorch_lora_weights.safetensors), e.g. "
                "runs/demo/train/cv_dpo/final/unet"
            )
        unet = _base_unet(base)
        unet.load_lora_adapter(str(lora.parent), weight_name=lora.name, prefix="unet")
        unet.fuse_lora()
        unet.unload_lora()
    return unet.to(dtype=dtype) if dtype is not None else unet


def _base_unet(base: Any) -> Any:
    from diffusers import UNet2DConditionModel

    if isinstance(base, UNet2DConditionModel):
        return base
    b = Path(str(base))
    if b.is_dir() and not (b / "config.json").is_file() and (b / "unet" / "config.json").is_file():
        return UNet2DConditionModel.from_pretrained(b / "unet")
    if b.is_dir():
        return UNet2DConditionModel.from_pretrained(b)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")  # a Hub id
