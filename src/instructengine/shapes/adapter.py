"""ShapesWorld's training adapter (registered as ``model.kind: shapes``): pixel-space U-Net
(3 channels, images in [-1, 1], no VAE) and a tiny CLIP text encoder fed by a word-level tokenizer
padded to a fixed length. ``model.path: null`` trains the shipped model."""

from __future__ import annotations

from typing import Any

import torch

from instructengine.train.models import Cond, ModelAdapter, noise_scheduler, tokenize_padded

__all__ = ["ShapesAdapter", "load_shapes_adapter"]


class ShapesAdapter(ModelAdapter):
    """ShapesWorld: pixel-space U-Net (3 channels, images in [-1, 1], no VAE) and a tiny CLIP text
    encoder fed by a word-level tokenizer padded to a fixed length."""

    kind = "shapes"

    def __init__(self, unet: Any, noise_scheduler: Any, text_encoder: Any, tokenizer: Any):
        super().__init__(unet, noise_scheduler, vae=None)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Cond:
        ids = tokenize_padded(self.tokenizer, prompts).to(self.device)
        return {"encoder_hidden_states": self.text_encoder(ids).last_hidden_state}

    @torch.no_grad()
    def latent_dist(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = pixels.to(self.device, dtype=torch.float32)
        return p, torch.zeros_like(p)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float()


def load_shapes_adapter(cfg: Any) -> ShapesAdapter:
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    path = cfg.source()
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    if unet.config.in_channels != 3:
        raise ValueError(f"model.kind 'shapes' needs a pixel-space U-Net (in_channels 3); {path!r} has "
                         f"{unet.config.in_channels}")
    return ShapesAdapter(
        unet, noise_scheduler(cfg),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
    )


def _default_path() -> str:
    from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


load_shapes_adapter.default_path = _default_path()  # type: ignore[attr-defined]
