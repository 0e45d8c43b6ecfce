"""Load BLIP checkpoints in their original layout (salesforce/BLIP, ImageReward) into transformers modules.

The BLIP score behind Table 1 (ImageReward's ``models/BLIPScore.py``) uses BLIP's pre-trained
``model_large.pth`` (``{"model": state_dict}``) and ImageReward (``ImageReward.pt``) wraps the same
BLIP under ``blip.``. Neither is on the Hub in transformers format, so this module maps them onto
``transformers.BlipVisionModel`` + ``BlipTextModel``. The mapping follows transformers'
``models/blip/convert_blip_original_pytorch_to_hf.py``; the architecture follows BLIP's
``models/vit.py`` (timm-style ViT, LayerNorm eps 1e-6, exact GELU, packed qkv) and ``models/med.py``
(BERT whose layers also carry cross-attention to the image; same parameter names as
``BlipTextModel``):

===============================  ===========================================
BLIP (``visual_encoder.``)        transformers ``BlipVisionModel``
===============================  ===========================================
cls_token                         embeddings.class_embedding
pos_embed                         embeddings.position_embedding
patch_embed.proj                  embeddings.patch_embedding
blocks.{i}.norm1 / norm2          encoder.layers.{i}.layer_norm1 / layer_norm2
blocks.{i}.attn.qkv / attn.proj   encoder.layers.{i}.self_attn.qkv / projection
blocks.{i}.mlp.fc1 / fc2          encoder.layers.{i}.mlp.fc1 / fc2
norm                              post_layernorm
===============================  ===========================================

``text_encoder.*`` keeps its names; ``vision_proj`` / ``text_proj`` are plain ``nn.Linear``.
The vision width, depth, patch and image size are read from the tensors; heads are
``width // 64`` (BLIP's ViT-B: 12, ViT-L: 16); the text sizes come from ``med_config.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["BlipParts", "blip_text_config", "blip_vision_config", "load_blip_parts"]

_VISION_BLOCK_MAP = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


class BlipParts(nn.Module):
    """The BLIP pieces the scorers use: ViT image encoder, BERT text encoder, ITC projections."""

    def __init__(self, vision: nn.Module, text: nn.Module, vision_proj: nn.Module | None, text_proj: nn.Module | None):
        super().__init__()
        self.vision = vision
        self.text = text
        self.vision_proj = vision_proj
        self.text_proj = text_proj


def _sub(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def blip_vision_config(vsd: Mapping[str, Any]):
    """``BlipVisionConfig`` from BLIP ``visual_encoder`` tensors (prefix already stripped)."""
    from transformers import BlipVisionConfig

    conv = vsd["patch_embed.proj.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(vsd["pos_embed"].shape[1])
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise ValueError(f"visual_encoder.pos_embed has {n_pos} positions, not 1 + a square grid")
    depth = len({int(m.group(1)) for k in vsd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError("visual_encoder has no blocks.{i}.* weights")
    if width % 64:
        raise ValueError(f"visual_encoder width {width} is not a multiple of 64 (BLIP uses 64-wide heads)")
    return BlipVisionConfig(
        hidden_size=width, intermediate_size=int(vsd["blocks.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=depth, num_attention_heads=width // 64, image_size=grid * patch,
        patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6,
    )


def blip_text_config(med_config: Mapping[str, Any], vision_width: int):
    """``BlipTextConfig`` from a BLIP ``med_config.json`` (with ``encoder_width`` = the ViT width)."""
    from transformers import BlipTextConfig

    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in med_config]
    if missing:
        raise ValueError(f"med_config is missing {missing}; a BLIP med_config.json has {list(required)}")
    vocab = int(med_config["vocab_size"])
    return BlipTextConfig(
        vocab_size=vocab,
        hidden_size=int(med_config["hidden_size"]),
        encoder_hidden_size=vision_width,
        intermediate_size=int(med_config["intermediate_size"]),
        num_hidden_layers=int(med_config["num_hidden_layers"]),
        num_attention_heads=int(med_config["num_attention_heads"]),
        max_position_embeddings=int(med_config.get("max_position_embeddings", 512)),
        hidden_act=med_config.get("hidden_act", "gelu"),
        layer_norm_eps=float(med_config.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(med_config.get("pad_token_id", 0)),
        bos_token_id=None,
        sep_token_id=None,
        eos_token_id=None,
        is_decoder=True,  # builds the cross-attention layers the checkpoint holds (used by ImageReward)
    )


def _convert_vision(vsd: Mapping[str, Any], depth: int) -> dict[str, Any]:
    out = {
        "embeddings.class_embedding": vsd["cls_token"],
        "embeddings.position_embedding": vsd["pos_embed"],
        "embeddings.patch_embedding.weight": vsd["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": vsd["patch_embed.proj.bias"],
        "post_layernorm.weight": vsd["norm.weight"],
        "post_layernorm.bias": vsd["norm.bias"],
    }
    for i in range(depth):
        for old, new in _VISION_BLOCK_MAP.items():
            for p in ("weight", "bias"):
                out[f"encoder.layers.{i}.{new}.{p}"] = vsd[f"blocks.{i}.{old}.{p}"]
    return out


def _load_strict(module: nn.Module, sd: Mapping[str, Any], what: str) -> None:
    missing, unexpected = module.load_state_dict(dict(sd), strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{what}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


def load_blip_parts(
    state_dict: Mapping[str, Any],
    med_config: Mapping[str, Any] | str | Path,
    prefix: str = "",
    with_projections: bool = True,
) -> BlipParts:
    """Build the BLIP encoders from an original-layout state dict.

    Args:
        state_dict: BLIP weights; ``{"model": ...}`` (BLIP releases) is unwrapped.
        med_config: the BERT config (dict or path to ``med_config.json``).
        prefix: where BLIP sits in the state dict ("" for BLIP, "blip." for ImageReward).
        with_projections: load ``vision_proj`` / ``text_proj`` (the ITC heads; ImageReward does not use them).

    Raises:
        ValueError: a weight the model needs is missing, or the text encoder holds keys the
            model does not have.
    """
    from accelerate import init_empty_weights
    from transformers import BlipTextModel, BlipVisionModel

    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    if not isinstance(med_config, Mapping):
        med_config = json.loads(Path(med_config).read_text())
    vsd = _sub(state_dict, prefix + "visual_encoder.")
    tsd = {k: v for k, v in _sub(state_dict, prefix + "text_encoder.").items() if not k.endswith("position_ids")}
    if not vsd or not tsd:
        raise ValueError(
            f"no BLIP weights under {prefix + 'visual_encoder.'!r} / {prefix + 'text_encoder.'!r}; "
            f"first keys are {list(state_dict)[:5]}"
        )
    vcfg = blip_vision_config(vsd)
    tcfg = blip_text_config(med_config, vcfg.hidden_size)
    if tsd["embeddings.word_embeddings.weight"].shape[0] != tcfg.vocab_size:
        raise ValueError(
            f"med_config vocab_size {tcfg.vocab_size} != checkpoint word embeddings "
            f"{tsd['embeddings.word_embeddings.weight'].shape[0]}"
        )
    with init_empty_weights():
        vision = BlipVisionModel(vcfg)
        text = BlipTextModel(tcfg, add_pooling_layer=False)
    _load_strict(vision, _convert_vision(vsd, vcfg.num_hidden_layers), "BLIP visual_encoder")
    _load_strict(text, tsd, "BLIP text_encoder")

    vision_proj = text_proj = None
    if with_projections:
        for name in ("vision_proj", "text_proj"):
            if prefix + name + ".weight" not in state_dict:
                raise ValueError(f"BLIP checkpoint has no {prefix + name}.weight (needed for the contrastive score)")
        vw = state_dict[prefix + "vision_proj.weight"]
        tw = state_dict[prefix + "text_proj.weight"]
        vision_proj = nn.Linear(vw.shape[1], vw.shape[0])
        text_proj = nn.Linear(tw.shape[1], tw.shape[0])
        vision_proj.load_state_dict({"weight": vw, "bias": state_dict[prefix + "vision_proj.bias"]})
        text_proj.load_state_dict({"weight": tw, "bias": state_dict[prefix + "text_proj.bias"]})
    return BlipParts(vision, text, vision_proj, text_proj).eval()


@torch.no_grad()
def blip_image_embeds(parts: BlipParts, pixel_values: torch.Tensor) -> torch.Tensor:
    """All ViT tokens after the final LayerNorm (BLIP's ``visual_encoder(image)``), shape (N, 1+P, D)."""
    return parts.vision(pixel_values=pixel_values).last_hidden_state
