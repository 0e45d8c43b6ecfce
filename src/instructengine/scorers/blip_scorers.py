"""BLIP-family scorers: the BLIP score (contrastive cosine) and ImageReward.

* **BLIP score** (ImageReward ``models/BLIPScore.py``): BLIP ViT-L pre-trained ``model_large.pth``;
  prompt tokenised by BERT (``bert-base-uncased``) padded to 35; text CLS -> ``text_proj`` ->
  normalise; image CLS -> ``vision_proj`` -> normalise; the score is the cosine of the two (the
  image-text *contrastive* head, not the ITM classifier). CLIP ``_transform`` preprocessing (224,
  bicubic, torchvision centre crop, OpenAI mean/std).
* **ImageReward** (ImageReward ``ImageReward.py``): the same BLIP with its BERT cross-attending to
  all ViT tokens; CLS state -> 5-layer MLP -> ``(r - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from instructengine.config import Config, validate_config
from instructengine.scorers.preprocess import ImageTransform
from instructengine.scorers.base import ScorerContext, check_batch

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
BLIP_TEXT_MAX_LENGTH = 35
MED_CONFIG = "THUDM/ImageReward/med_config.json"
BLIP_LARGE_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_large.pth"


def _load_json(source: str) -> dict[str, Any]:
    import json

    from instructengine.scorers.weights import resolve_file

    return json.loads(resolve_file(source, "med_config").read_text())


def _load_bert_tokenizer(ctx: ScorerContext, source: str):
    def load():
        from transformers import BertTokenizer

        return BertTokenizer.from_pretrained(source)

    return ctx.shared(("bert_tokenizer", source), load)


class _BlipBase:
    def __init__(self, name: str, parts: Any, tokenizer: Any, ctx: ScorerContext, info: dict[str, Any]):
        self.name = name
        self.columns = (name,)
        self.parts = parts
        self.tokenizer = tokenizer
        self.device = ctx.device
        self.dtype = ctx.torch_dtype
        self.transform = ImageTransform(size=int(parts.vision.config.image_size), mode="crop", crop_rounding="torchvision")
        self.info = {**info, "transform": repr(self.transform)}

    def _text(self, prompts):
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=BLIP_TEXT_MAX_LENGTH, return_tensors="pt")
        return tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)

    def _image_embeds(self, images):
        pixels = self.transform(images).to(self.device, self.dtype)
        return self.parts.vision(pixel_values=pixels).last_hidden_state


class BlipContrastiveScorer(_BlipBase):
    def score(self, images, prompts) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        check_batch(self.name, images, prompts)
        with torch.no_grad():
            ids, mask = self._text(prompts)
            text_cls = self.parts.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0, :]
            txt = F.normalize(self.parts.text_proj(text_cls).float(), dim=-1)
            img = F.normalize(self.parts.vision_proj(self._image_embeds(images)[:, 0, :]).float(), dim=-1)
        return (txt * img).sum(-1).cpu().numpy()


class ImageRewardScorer(_BlipBase):
    def __init__(self, *args: Any, head: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.head = head

    def score(self, images, prompts) -> np.ndarray:
        import torch

        check_batch(self.name, images, prompts)
        with torch.no_grad():
            ids, mask = self._text(prompts)
            embeds = self._image_embeds(images)
            atts = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
            out = self.parts.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds,
                                  encoder_attention_mask=atts)
            feats = out.last_hidden_state[:, 0, :].float()
            r = self.head(feats).squeeze(-1)
        return ((r - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).cpu().numpy()


class BlipScoreOptions(Config):
    checkpoint: str = Field(BLIP_LARGE_URL, description="BLIP pre-trained ViT-L checkpoint (model_large.pth): URL, Hub file or path")
    med_config: str = Field(MED_CONFIG, description="BERT config of BLIP's text encoder (med_config.json)")
    tokenizer: str = Field("bert-base-uncased", description="BERT tokenizer source")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the checkpoint (only for trusted files)")


def make_blip_score(options: dict[str, Any], ctx: ScorerContext) -> BlipContrastiveScorer:
    o = validate_config(BlipScoreOptions, options, "scorer blip")

    def load():
        from instructengine.scorers.convert_blip import load_blip_parts
        from instructengine.scorers.weights import load_state_dict, resolve_file

        sd = load_state_dict(resolve_file(o.checkpoint, "BLIP checkpoint"), "BLIP checkpoint", o.trust_pickle)
        return load_blip_parts(sd, _load_json(o.med_config), prefix="").to(ctx.device, ctx.torch_dtype).eval()

    parts = ctx.shared(("blip", o.checkpoint, o.med_config), load)
    tok = _load_bert_tokenizer(ctx, o.tokenizer)
    return BlipContrastiveScorer("blip", parts, tok, ctx, {"checkpoint": o.checkpoint, "tokenizer": o.tokenizer})


class ImageRewardOptions(Config):
    checkpoint: str = Field("THUDM/ImageReward/ImageReward.pt", description="ImageReward-v1.0 weights: Hub file or local path")
    med_config: str = Field(MED_CONFIG, description="BERT config of the BLIP text encoder (med_config.json)")
    tokenizer: str = Field("bert-base-uncased", description="BERT tokenizer source")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the checkpoint (only for trusted files)")


def make_imagereward(options: dict[str, Any], ctx: ScorerContext) -> ImageRewardScorer:
    o = validate_config(ImageRewardOptions, options, "scorer imagereward")

    def load():
        from instructengine.scorers.convert_blip import load_blip_parts
        from instructengine.scorers.heads import RewardMLP
        from instructengine.scorers.weights import load_state_dict, resolve_file

        sd = load_state_dict(resolve_file(o.checkpoint, "ImageReward checkpoint"), "ImageReward checkpoint", o.trust_pickle)
        parts = load_blip_parts(sd, _load_json(o.med_config), prefix="blip.", with_projections=False)
        head = RewardMLP.from_state_dict({k: v for k, v in sd.items() if k.startswith("mlp.")}, "ImageReward MLP")
        return parts.to(ctx.device, ctx.torch_dtype).eval(), head.to(ctx.device).eval()

    parts, head = ctx.shared(("imagereward", o.checkpoint, o.med_config), load)
    tok = _load_bert_tokenizer(ctx, o.tokenizer)
    return ImageRewardScorer("imagereward", parts, tok, ctx, {"checkpoint": o.checkpoint, "tokenizer": o.tokenizer}, head=head)
