"""CLIP-family scorers: PickScore, CLIP score, LAION aesthetic, HPSv2, ICT and HP.

Each follows its official code (docs/evaluation.md has the table):

* **PickScore** (yuvalkirstain/PickScore README): ``PickScore_v1`` CLIP-H, the laion ViT-H-14
  processor (shortest side 224 bicubic, centre crop with transformers' floor rounding), cosine of
  the normalised embeddings. The official number is ``logit_scale.exp() * cosine`` (= 100 x cosine);
  Table 1 reports the cosine, which is what this returns.
* **CLIP score** (ImageReward ``models/CLIPScore.py``): OpenAI ViT-L/14, CLIP's ``_transform``
  (torchvision centre crop), raw cosine (not x100, not 2.5 * max(cos, 0)).
* **Aesthetic** (improved-aesthetic-predictor ``simple_inference.py``; ImageReward
  ``models/AestheticScore.py``): the MLP on the L2-normalised ViT-L/14 image embedding; 1-10 scale.
* **HPSv2** (HPSv2 ``hpsv2/img_score.py``): open_clip ViT-H-14 fine-tuned (``HPS_v2_compressed.pt``,
  converted by :mod:`..convert_openclip`), *letterboxed* to 224 (``ResizeMaxSize``), raw cosine.
* **ICT** (ICTHP ``trainer/eval/eval.py``): laion CLIP-H with the ICT weights loaded non-strictly,
  transformers ``CLIPProcessor`` preprocessing, cosine of the normalised embeddings.
* **HP** (same file): a second laion CLIP-H with the HP backbone weights; ``sigmoid(MLP(f))`` of the
  *unnormalised* image embedding ``f``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import Field

from instructengine.config import Config, validate_config
from instructengine.scorers.preprocess import ImageTransform
from instructengine.scorers.base import ScorerContext, check_batch

LAION_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPENAI_VIT_L = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


# --------------------------------------------------------------------------------------------- loading


def _pooled(out: Any):
    """transformers 5 returns a ModelOutput from get_*_features (projection in ``pooler_output``)."""
    return out if hasattr(out, "dim") else out.pooler_output


class ClipEncoder:
    """A ``CLIPModel`` and its tokenizer, with the last batch's image features remembered.

    Two scorers on the same model and transform (CLIP score + aesthetic) call
    :meth:`image_features` with the same list of images; the second call reuses the first one's
    features. The memo is keyed by the identity of the image objects and holds references to them,
    so a key cannot be reused by other images while it is stored.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str, dtype: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.image_size = int(model.config.vision_config.image_size)
        self._memo: tuple[Any, list[Any], Any] | None = None

    def image_features(self, images: Sequence[Any], transform: ImageTransform):
        """Projected image embeddings (float32, not normalised), shape (N, E)."""
        import torch

        key = (transform, tuple(id(im) for im in images))
        if self._memo is not None and self._memo[0] == key:
            return self._memo[2]
        pixels = transform(images).to(self.device, self.dtype)
        with torch.no_grad():
            feats = _pooled(self.model.get_image_features(pixel_values=pixels)).float()
        self._memo = (key, list(images), feats)
        return feats

    def text_features(self, prompts: Sequence[str]):
        """Projected text embeddings (float32, not normalised); each distinct prompt encoded once."""
        import torch

        unique = list(dict.fromkeys(prompts))
        tok = self.tokenizer(
            unique, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.no_grad():
            feats = _pooled(
                self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
                )
            ).float()
        index = {p: i for i, p in enumerate(unique)}
        return feats[[index[p] for p in prompts]]


def _load_tokenizer(ctx: ScorerContext, source: str):
    def load():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)

    return ctx.shared(("tokenizer", source), load)


def _load_hf_clip(ctx: ScorerContext, source: str):
    def load():
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(source, dtype=ctx.torch_dtype).to(ctx.device).eval()

    return ctx.shared(("hf_clip", source), load)


def _load_hf_clip_with_weights(ctx: ScorerContext, base: str, weights: str, trust_pickle: bool):
    """A fresh copy of ``base`` with ``weights`` loaded non-strictly, as ICTHP's eval.py does.

    Raises:
        ValueError: the weights file shares no key with the model (wrong file), or a shape differs.
    """

    def load():
        from transformers import CLIPModel

        from instructengine.scorers.weights import load_state_dict, resolve_file

        model = CLIPModel.from_pretrained(base, dtype=ctx.torch_dtype)
        sd = load_state_dict(resolve_file(weights, "CLIP weights"), "CLIP weights", trust_pickle)
        own = model.state_dict()
        matched = [k for k in sd if k in own]
        if not matched:
            raise ValueError(f"weights {weights!r} share no parameter name with CLIPModel {base!r}; first keys: {list(sd)[:5]}")
        missing, _ = model.load_state_dict(sd, strict=False)
        model.loaded_report = {"weights": weights, "matched": len(matched), "ignored": len(sd) - len(matched),
                               "kept_from_base": len([k for k in missing if not k.endswith("position_ids")])}
        return model.to(ctx.device).eval()

    return ctx.shared(("hf_clip+weights", base, weights), load)


def _encoder(ctx: ScorerContext, model_key: tuple, model: Any, tokenizer_source: str) -> ClipEncoder:
    tok = _load_tokenizer(ctx, tokenizer_source)
    return ctx.shared(("clip_encoder", model_key, tokenizer_source), lambda: ClipEncoder(model, tok, ctx.device, ctx.torch_dtype))


def _cosine(img, txt) -> np.ndarray:
    import torch.nn.functional as F

    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).cpu().numpy()


# --------------------------------------------------------------------------------------------- scorers


class CosineScorer:
    """Cosine between normalised image and text embeddings of one CLIP model."""

    def __init__(self, name: str, encoder: ClipEncoder, transform: ImageTransform, info: dict[str, Any]):
        self.name = name
        self.columns = (name,)
        self.encoder = encoder
        self.transform = transform
        self.info = info

    def score(self, images, prompts) -> np.ndarray:
        check_batch(self.name, images, prompts)
        return _cosine(self.encoder.image_features(images, self.transform), self.encoder.text_features(prompts))


class ImageHeadScorer:
    """An MLP head on CLIP image embeddings (aesthetic: normalised input; HP: raw input + sigmoid)."""

    def __init__(self, name: str, encoder: ClipEncoder, transform: ImageTransform, head: Any,
                 normalize_input: bool, sigmoid: bool, info: dict[str, Any]):
        self.name = name
        self.columns = (name,)
        self.encoder = encoder
        self.transform = transform
        self.head = head
        self.normalize_input = normalize_input
        self.sigmoid = sigmoid
        self.info = info

    def score(self, images, prompts) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        check_batch(self.name, images, prompts)
        feats = self.encoder.image_features(images, self.transform)
        if self.normalize_input:
            feats = F.normalize(feats, dim=-1)
        with torch.no_grad():
            out = self.head(feats.to(next(self.head.parameters()).dtype)).float().squeeze(-1)
        if self.sigmoid:
            out = torch.sigmoid(out)
        return out.cpu().numpy()


def _load_head(ctx: ScorerContext, source: str, trust_pickle: bool):
    def load():
        from instructengine.scorers.heads import RewardMLP
        from instructengine.scorers.weights import load_state_dict, resolve_file

        sd = load_state_dict(resolve_file(source, "MLP head"), "MLP head", trust_pickle)
        return RewardMLP.from_state_dict(sd, f"MLP head {source!r}").to(ctx.device)

    return ctx.shared(("mlp_head", source), load)


# --------------------------------------------------------------------------------------------- options + factories


class PickScoreOptions(Config):
    model: str = Field("yuvalkirstain/PickScore_v1", description="PickScore CLIPModel: Hub id or local folder")
    processor: str = Field(LAION_VIT_H, description="tokenizer source (the official code uses the laion ViT-H-14 processor)")


def make_pickscore(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(PickScoreOptions, options, "scorer pickscore")
    model = _load_hf_clip(ctx, o.model)
    enc = _encoder(ctx, ("hf_clip", o.model), model, o.processor)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    return CosineScorer("pickscore", enc, t, {"model": o.model, "processor": o.processor, "transform": repr(t)})


class ClipScoreOptions(Config):
    model: str = Field(OPENAI_VIT_L, description="CLIPModel for the CLIP score: Hub id or local folder")
    tokenizer: str | None = Field(None, description="tokenizer source; default: the model's own")


def make_clip_score(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(ClipScoreOptions, options, "scorer clip")
    model = _load_hf_clip(ctx, o.model)
    enc = _encoder(ctx, ("hf_clip", o.model), model, o.tokenizer or o.model)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="torchvision")
    return CosineScorer("clip", enc, t, {"model": o.model, "transform": repr(t)})


class AestheticOptions(Config):
    clip_model: str = Field(OPENAI_VIT_L, description="CLIP ViT-L/14 whose image embedding the head reads")
    head: str = Field(AESTHETIC_HEAD_URL, description="sac+logos+ava1-l14-linearMSE.pth: URL, Hub file or local path")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the head file (only for trusted files)")


def make_aesthetic(options: dict[str, Any], ctx: ScorerContext) -> ImageHeadScorer:
    o = validate_config(AestheticOptions, options, "scorer aesthetic")
    model = _load_hf_clip(ctx, o.clip_model)
    enc = _encoder(ctx, ("hf_clip", o.clip_model), model, o.clip_model)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="torchvision")
    head = _load_head(ctx, o.head, o.trust_pickle)
    return ImageHeadScorer("aesthetic", enc, t, head, normalize_input=True, sigmoid=False,
                           info={"clip_model": o.clip_model, "head": o.head, "transform": repr(t)})


class HPSv2Options(Config):
    checkpoint: str = Field("xswu/HPSv2/HPS_v2_compressed.pt", description="open_clip checkpoint ({'state_dict': ...}); v2.1 is HPS_v2.1_compressed.pt")
    arch: str = Field("ViT-H-14", description="open_clip architecture name (sets head widths)")
    tokenizer: str = Field(LAION_VIT_H, description="CLIP BPE tokenizer source (open_clip's ViT-H-14 tokenizer)")
    vision_heads: int | None = Field(None, description="override the vision head count")
    text_heads: int | None = Field(None, description="override the text head count")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the checkpoint (only for trusted files)")


def make_hpsv2(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(HPSv2Options, options, "scorer hpsv2")

    def load():
        from instructengine.scorers.convert_openclip import load_open_clip_as_clip
        from instructengine.scorers.weights import load_state_dict, resolve_file

        sd = load_state_dict(resolve_file(o.checkpoint, "HPSv2 checkpoint"), "HPSv2 checkpoint", o.trust_pickle)
        model = load_open_clip_as_clip(sd, arch=o.arch, vision_heads=o.vision_heads, text_heads=o.text_heads)
        return model.to(ctx.device, ctx.torch_dtype).eval()

    key = ("open_clip", o.checkpoint, o.arch, o.vision_heads, o.text_heads)
    model = ctx.shared(key, load)
    enc = _encoder(ctx, key, model, o.tokenizer)
    t = ImageTransform(size=enc.image_size, mode="letterbox")
    return CosineScorer("hpsv2", enc, t, {"checkpoint": o.checkpoint, "arch": o.arch, "transform": repr(t)})


class ICTOptions(Config):
    base: str = Field(LAION_VIT_H, description="base CLIPModel the ICT weights are loaded onto")
    weights: str = Field("8y/ICT/pytorch_model.bin", description="ICT weights (transformers CLIPModel names, loaded non-strictly)")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the weights (only for trusted files)")


def make_ict(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(ICTOptions, options, "scorer ict")
    model = _load_hf_clip_with_weights(ctx, o.base, o.weights, o.trust_pickle)
    enc = _encoder(ctx, ("hf_clip+weights", o.base, o.weights), model, o.base)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    return CosineScorer("ict", enc, t, {"base": o.base, "weights": o.weights, "load": model.loaded_report, "transform": repr(t)})


class HPOptions(Config):
    base: str = Field(LAION_VIT_H, description="base CLIPModel the HP backbone weights are loaded onto")
    backbone: str = Field("8y/HP/hp_backbone/pytorch_model.bin", description="HP backbone weights (loaded non-strictly)")
    head: str = Field("8y/HP/hp_scorer/mlp_pytorch_model.bin", description="HP MLP head weights")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the weight files (only for trusted files)")


def make_hp(options: dict[str, Any], ctx: ScorerContext) -> ImageHeadScorer:
    o = validate_config(HPOptions, options, "scorer hp")
    model = _load_hf_clip_with_weights(ctx, o.base, o.backbone, o.trust_pickle)
    enc = _encoder(ctx, ("hf_clip+weights", o.base, o.backbone), model, o.base)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    head = _load_head(ctx, o.head, o.trust_pickle)
    return ImageHeadScorer("hp", enc, t, head, normalize_input=False, sigmoid=True,
                           info={"base": o.base, "backbone": o.backbone, "head": o.head,
                                 "load": model.loaded_report, "transform": repr(t)})
