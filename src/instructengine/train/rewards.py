"""Differentiable rewards for ReFL: ``reward(images, prompts) -> (B,) tensor`` with gradients.

``images`` are float (B, 3, H, W) in [0, 1] on the training device; the reward must be
differentiable with respect to them (its own weights stay frozen). Built in: ``clip`` -- cosine
similarity of a CLIP model's image and text embeddings (any ``CLIPModel`` folder: OpenAI CLIP,
or the ShapesWorld contrastive model with ``pixel_mean=[0.5]*3, pixel_std=[0.5]*3`` since it reads
pixels in [-1, 1]). Anything else: ``"package.module:factory"``, called as
``factory(device=..., **reward_kwargs)`` and returning such a callable (e.g. an ImageReward or
HPSv2 wrapper).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ClipReward", "load_reward"]

RewardFn = Callable[[torch.Tensor, list[str]], torch.Tensor]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object from get_*_features; 4.x returned the tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipReward:
    """CLIP image-text cosine similarity, times ``scale``; differentiable in the images."""

    def __init__(self, path: str, device: str | torch.device = "cpu", pixel_mean: Sequence[float] = CLIP_MEAN,
                 pixel_std: Sequence[float] = CLIP_STD, scale: float = 1.0, tokenizer_path: str | None = None):
        from transformers import AutoTokenizer, CLIPModel

        if not (Path(path) / "config.json").is_file() and not Path(path).exists():
            raise FileNotFoundError(f"reward model folder {path!r} does not exist (refl.reward_kwargs.path)")
        self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False).to(device)
        tok_dir = tokenizer_path or (str(Path(path) / "tokenizer") if (Path(path) / "tokenizer").is_dir() else path)
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        self.device = torch.device(device)
        self.mean = torch.tensor(pixel_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pixel_std, device=self.device).view(1, 3, 1, 1)
        self.size = int(self.model.config.vision_config.image_size)
        self.scale = scale

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        x = images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        img = F.normalize(_features(self.model.get_image_features(pixel_values=x)), dim=-1)
        txt = F.normalize(_features(self.model.get_text_features(input_ids=ids.to(self.device))), dim=-1)
        return self.scale * (img * txt).sum(-1)


def load_reward(spec: str, kwargs: dict[str, Any], device: str | torch.device) -> RewardFn:
    """Build the reward named by ``spec`` ('clip' or 'module:factory').

    Raises:
        ValueError: a spec that is neither, or a factory that cannot be imported.
    """
    if spec == "clip":
        if "path" not in kwargs:
            raise ValueError("refl.reward 'clip' needs refl.reward_kwargs.path (a CLIPModel folder)")
        return ClipReward(device=device, **kwargs)
    if ":" not in spec:
        raise ValueError(f"refl.reward={spec!r}: expected 'clip' or 'package.module:factory'")
    module, name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"refl.reward={spec!r} cannot be imported: {err}") from None
    return factory(device=device, **kwargs)
