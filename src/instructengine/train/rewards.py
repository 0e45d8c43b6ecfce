"""Differentiable rewards for ReFL: ``reward(images, prompts) -> (B,) tensor`` with gradients.

``images`` are float (B, 3, H, W) in [0, 1] on the training device; the reward must be
differentiable with respect to them (its own weights stay frozen). Built in:

* ``imagereward`` -- ImageReward-v1.0 (the reward of the paper's ReFL baseline and of ImageReward's
  own ReFL code, ``score_gard``): the evaluation scorer's model (same checkpoint, BLIP conversion,
  tokenizer, MLP head and standardisation) on a tensor transcription of its preprocessing
  (:func:`clip_preprocess_tensor`: shortest side to 224 bicubic, centre crop, CLIP mean/std);
* ``clip`` -- cosine similarity of a CLIP model's image and text embeddings (any ``CLIPModel``
  folder: OpenAI CLIP, or the ShapesWorld contrastive model with ``pixel_mean=[0.5]*3,
  pixel_std=[0.5]*3`` since it reads pixels in [-1, 1]).

Anything else: ``"package.module:factory"``, called as ``factory(device=..., **reward_kwargs)`` and
returning such a callable (e.g. an HPSv2 wrapper).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ClipReward", "ImageRewardReward", "clip_preprocess_tensor", "load_reward"]

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


def clip_preprocess_tensor(
    images: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
    antialias: bool = True,
) -> torch.Tensor:
    """CLIP's ``_transform`` (Resize(size, bicubic), CenterCrop(size), Normalize) on a (B, 3, H, W) float
    tensor in [0, 1], differentiable in the pixels.

    The same geometry as the scorers' PIL path (``evaluate.preprocess``): the shorter side becomes
    ``size`` and the longer ``int(size * long / short)``; the crop starts at ``round((side - size) / 2)``
    (torchvision's ``CenterCrop``). With ``antialias=True`` the resize is torch's antialiased bicubic
    (a = -0.5), the filter PIL's ``BICUBIC`` applies to the scorer's images; ``antialias=False`` is
    what ImageReward's ReFL script got from torchvision < 0.17 ``Resize`` on tensors (plain bicubic,
    a = -0.75, aliased when shrinking).

    Raises:
        ValueError: not a (B, 3, H, W) tensor.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    x = images if images.dtype in (torch.float32, torch.float64) else images.float()
    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        h, w = (new_long, size) if w <= h else (size, new_long)
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


class ImageRewardReward:
    """ImageReward as a differentiable reward: ``(images in [0, 1] (B,3,H,W), prompts) -> (B,)``.

    The model is the one the ``imagereward`` evaluation scorer loads (``checkpoint``, ``med_config``,
    ``tokenizer`` as there: Hub files or local paths); the prompt is tokenised by BERT padded to 35,
    the image goes through :func:`clip_preprocess_tensor` at the ViT's size, the cross-attended CLS
    through the MLP, and the output is standardised with ImageReward's mean and std -- ImageReward's
    ``score_gard``. Weights are frozen; gradients flow to the pixels.

    Raises:
        FileNotFoundError / ValueError: from loading the checkpoint (see the scorer).
    """

    def __init__(self, checkpoint: str = "THUDM/ImageReward/ImageReward.pt", med_config: str | None = None,
                 tokenizer: str = "bert-base-uncased", device: str | torch.device = "cpu", trust_pickle: bool = False,
                 antialias: bool = True):
        from instructengine.scorers import ScorerContext, build_scorer

        options: dict[str, Any] = {"checkpoint": checkpoint, "tokenizer": tokenizer, "trust_pickle": trust_pickle}
        if med_config is not None:
            options["med_config"] = med_config
        scorer = build_scorer("imagereward", options, ScorerContext(device=str(device)))
        self.parts = scorer.parts.requires_grad_(False).eval()
        self.head = scorer.head.requires_grad_(False).eval()
        self.tokenizer = scorer.tokenizer
        self.size = int(self.parts.vision.config.image_size)
        self.device = torch.device(device)
        self.antialias = antialias

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from instructengine.scorers.blip_scorers import (BLIP_TEXT_MAX_LENGTH, IMAGEREWARD_MEAN,
                                                                  IMAGEREWARD_STD)

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=BLIP_TEXT_MAX_LENGTH,
                             return_tensors="pt")
        pixels = clip_preprocess_tensor(images.to(self.device), self.size, antialias=self.antialias)
        embeds = self.parts.vision(pixel_values=pixels).last_hidden_state
        atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
        out = self.parts.text(input_ids=tok["input_ids"].to(self.device),
                              attention_mask=tok["attention_mask"].to(self.device),
                              encoder_hidden_states=embeds, encoder_attention_mask=atts)
        raw = self.head(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def load_reward(spec: str, kwargs: dict[str, Any], device: str | torch.device) -> RewardFn:
    """Build the reward named by ``spec`` ('imagereward', 'clip' or 'module:factory').

    Raises:
        ValueError: a spec that is none of these, or a factory that cannot be imported.
    """
    if spec == "imagereward":
        return ImageRewardReward(device=device, **kwargs)
    if spec == "clip":
        if "path" not in kwargs:
            raise ValueError("refl.reward 'clip' needs refl.reward_kwargs.path (a CLIPModel folder)")
        return ClipReward(device=device, **kwargs)
    if ":" not in spec:
        raise ValueError(f"refl.reward={spec!r}: expected 'imagereward', 'clip' or 'package.module:factory'")
    module, name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"refl.reward={spec!r} cannot be imported: {err}") from None
    return factory(device=device, **kwargs)
