"""CLIP-family scorers: PickScore, CLIP score, LAION aesthetic, HPSv2, ICT, HP and ICT x HP.

Each follows its official code (docs/evaluation.md has the table and the remaining deviations):

* **PickScore** (yuvalkirstain/PickScore README): ``PickScore_v1`` CLIP-H, the laion ViT-H-14
  processor (shortest side 224 bicubic, centre crop with transformers' floor rounding; its fast
  tokenizer, no ftfy cleaning), cosine of the normalised embeddings. The official number is
  ``logit_scale.exp() * cosine`` (= 100 x cosine); Table 1 reports the cosine, which is what this returns.
* **CLIP score** (ImageReward ``models/CLIPScore.py``): OpenAI ViT-L/14 (a transformers folder, or
  OpenAI's own ``ViT-L-14.pt`` converted in memory), CLIP's ``_transform`` (torchvision centre
  crop), ``clip.tokenize``'s prompt cleaning, raw cosine (not x100, not 2.5 * max(cos, 0)).
* **Aesthetic** (improved-aesthetic-predictor ``simple_inference.py``; ImageReward
  ``models/AestheticScore.py``): the MLP on the L2-normalised ViT-L/14 image embedding; 1-10 scale.
* **HPSv2** (HPSv2 ``hpsv2/img_score.py``): open_clip ViT-H-14 fine-tuned (``HPS_v2_compressed.pt``,
  converted by :mod:`..convert_openclip`), *letterboxed* to 224 on the float tensor
  (``ToTensor`` + ``ResizeMaxSize``), open_clip's prompt cleaning, raw cosine.
* **ICT** (ICTHP ``trainer/eval/eval.py``): laion CLIP-H with the ICT weights loaded non-strictly,
  transformers ``CLIPProcessor`` image preprocessing, HPSv2's open_clip tokenizer (so cleaned
  prompts), cosine of the normalised embeddings.
* **HP** (same file): a second laion CLIP-H with the HP backbone weights; ``sigmoid(MLP(f))`` of the
  *unnormalised* image embedding ``f``.
* **ICT x HP** (``ict_hp``): the product of the two per image, the paper's combined reward.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import Field

from instructengine.config import Config, validate_config
from instructengine.scorers.preprocess import ImageTransform
from instructengine.scorers.base import ScorerContext, check_batch
from instructengine.scorers.clip_text import clean_clip_prompt

LAION_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
OPENAI_VIT_L = "openai/clip-vit-large-patch14"
#: OpenAI's ViT-L/14 checkpoint as clip.load (and ImageReward's CLIP score) downloads it
OPENAI_VIT_L_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"
)
ICT_WEIGHTS = "8y/ICT/pytorch_model.bin"
HP_BACKBONE = "8y/HP/hp_backbone/pytorch_model.bin"
HP_HEAD = "8y/HP/hp_scorer/mlp_pytorch_model.bin"
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


# --------------------------------------------------------------------------------------------- loading


def _pooled(out: Any):
    """transformers 5 returns a ModelOutput from get_*_features (projection in ``pooler_output``)."""
    return out if hasattr(out, "dim") else out.pooler_output


class ClipEncoder:
    """A ``CLIPModel`` with the last batch's image features remembered; one per model and run.

    Every scorer on the same model (CLIP score + aesthetic) shares this object, so the second one
    to call :meth:`image_features` with the same images and transform reuses the first one's
    features. The memo is keyed by the identity of the image objects and holds references to them,
    so a key cannot be reused by other images while it is stored. Tokenizers belong to the scorers
    (they differ in text cleaning), so :meth:`text_features` takes one.
    """

    def __init__(self, model: Any, device: str, dtype: Any):
        self.model = model
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

    def text_features(self, prompts: Sequence[str], tokenizer: Any, clean: bool):
        """Projected text embeddings (float32, not normalised); each distinct prompt encoded once.

        ``clean``: pass each prompt through CLIP's ``basic_clean`` + ``whitespace_clean`` first
        (:func:`.clip_text.clean_clip_prompt`), as OpenAI CLIP's and open_clip's tokenizers do.
        """
        import torch

        unique = list(dict.fromkeys(prompts))
        texts = [clean_clip_prompt(p) for p in unique] if clean else unique
        tok = tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
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


def is_checkpoint_file(source: str) -> bool:
    """True when a model source names one weight file (local file, URL, or ``owner/repo/file.pt``).

    Anything else (a folder, an ``owner/repo`` Hub id) is read with ``CLIPModel.from_pretrained``.
    """
    from pathlib import Path

    p = Path(source).expanduser()
    if p.is_dir():
        return False
    if p.is_file() or source.startswith(("http://", "https://")):
        return True
    return len(source.split("/")) >= 3 and source.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _load_clip(ctx: ScorerContext, source: str, trust_pickle: bool = False) -> tuple[tuple, Any]:
    """(cache key, ``CLIPModel``) for a transformers folder / Hub id, or an OpenAI CLIP checkpoint file.

    A checkpoint file (OpenAI's ``ViT-L-14.pt``, a TorchScript archive or a plain state dict, as
    ``clip.load`` accepts) is converted to a ``CLIPModel`` in memory by
    :func:`..convert_openclip.load_openai_clip_as_clip`.

    Raises:
        ValueError: a file that is not a ViT CLIP checkpoint (the message says what to pass).
    """
    if is_checkpoint_file(source):
        key = ("clip_file", source)

        def load_file():
            from instructengine.scorers.convert_openclip import load_openai_clip_as_clip
            from instructengine.scorers.weights import load_state_dict, resolve_file

            sd = load_state_dict(resolve_file(source, "CLIP checkpoint"), "CLIP checkpoint", trust_pickle)
            try:
                model = load_openai_clip_as_clip(sd)
            except ValueError as err:
                raise ValueError(f"CLIP checkpoint {source!r}: {err}") from err
            return model.to(ctx.device, ctx.torch_dtype).eval()

        return key, ctx.shared(key, load_file)

    key = ("hf_clip", source)

    def load_folder():
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(source, dtype=ctx.torch_dtype).to(ctx.device).eval()

    return key, ctx.shared(key, load_folder)


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


def _encoder(ctx: ScorerContext, model_key: tuple, model: Any) -> ClipEncoder:
    return ctx.shared(("clip_encoder", model_key), lambda: ClipEncoder(model, ctx.device, ctx.torch_dtype))


def _cosine(img, txt) -> np.ndarray:
    import torch.nn.functional as F

    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).cpu().numpy()


# --------------------------------------------------------------------------------------------- scorers


class CosineScorer:
    """Cosine between normalised image and text embeddings of one CLIP model.

    ``clean_text``: clean prompts as CLIP's ``SimpleTokenizer`` does before tokenising (see
    :mod:`.clip_text`); on for the metrics whose official code tokenises that way.
    """

    def __init__(self, name: str, encoder: ClipEncoder, tokenizer: Any, transform: ImageTransform,
                 clean_text: bool, info: dict[str, Any]):
        self.name = name
        self.columns = (name,)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.transform = transform
        self.clean_text = clean_text
        self.info = {**info, "clean_text": clean_text}

    def score(self, images, prompts) -> np.ndarray:
        check_batch(self.name, images, prompts)
        img = self.encoder.image_features(images, self.transform)
        return _cosine(img, self.encoder.text_features(prompts, self.tokenizer, self.clean_text))


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


class ProductScorer:
    """The per-image product of two scorers' values (ICT x HP)."""

    def __init__(self, name: str, first: Any, second: Any, info: dict[str, Any]):
        self.name = name
        self.columns = (name,)
        self.first = first
        self.second = second
        self.info = info

    def score(self, images, prompts) -> np.ndarray:
        check_batch(self.name, images, prompts)
        return np.asarray(self.first.score(images, prompts)) * np.asarray(self.second.score(images, prompts))


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
    key, model = _load_clip(ctx, o.model)
    enc = _encoder(ctx, key, model)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    # the official AutoProcessor's (fast) tokenizer runs no ftfy / html.unescape: no cleaning
    return CosineScorer("pickscore", enc, _load_tokenizer(ctx, o.processor), t, clean_text=False,
                        info={"model": o.model, "processor": o.processor, "transform": repr(t)})


class ClipScoreOptions(Config):
    model: str = Field(OPENAI_VIT_L, description=(
        "CLIP ViT-L/14: a transformers folder or Hub id, or OpenAI's ViT-L-14.pt (local file, URL or Hub "
        f"file; TorchScript or plain state dict, as clip.load reads it; official URL {OPENAI_VIT_L_URL})"))
    tokenizer: str | None = Field(None, description=(
        f"CLIP BPE tokenizer source; default: the model's own folder/Hub id, {OPENAI_VIT_L!r} for a checkpoint file"))
    trust_pickle: bool = Field(False, description="allow a full unpickle of a checkpoint file (only for trusted files)")


def _default_tokenizer(model: str, tokenizer: str | None) -> str:
    return tokenizer or (OPENAI_VIT_L if is_checkpoint_file(model) else model)


def make_clip_score(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(ClipScoreOptions, options, "scorer clip")
    key, model = _load_clip(ctx, o.model, o.trust_pickle)
    enc = _encoder(ctx, key, model)
    tok_source = _default_tokenizer(o.model, o.tokenizer)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="torchvision")
    # ImageReward's CLIPScore tokenises with clip.tokenize (SimpleTokenizer: ftfy + html.unescape)
    return CosineScorer("clip", enc, _load_tokenizer(ctx, tok_source), t, clean_text=True,
                        info={"model": o.model, "tokenizer": tok_source, "transform": repr(t)})


class AestheticOptions(Config):
    clip_model: str = Field(OPENAI_VIT_L, description=(
        "CLIP ViT-L/14 whose image embedding the head reads: transformers folder / Hub id, or OpenAI's ViT-L-14.pt"))
    head: str = Field(AESTHETIC_HEAD_URL, description="sac+logos+ava1-l14-linearMSE.pth: URL, Hub file or local path")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the head / checkpoint file (only for trusted files)")


def make_aesthetic(options: dict[str, Any], ctx: ScorerContext) -> ImageHeadScorer:
    o = validate_config(AestheticOptions, options, "scorer aesthetic")
    key, model = _load_clip(ctx, o.clip_model, o.trust_pickle)
    enc = _encoder(ctx, key, model)
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
    antialias: bool = Field(True, description=(
        "antialias of the letterbox's tensor resize: true = torchvision >= 0.17 (its default), "
        "false = torchvision < 0.17 (HPSv2's release-time environment); the score moves by ~5e-2 between them"))
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
    enc = _encoder(ctx, key, model)
    t = ImageTransform(size=enc.image_size, mode="letterbox", antialias=o.antialias)
    # HPSv2 tokenises with open_clip's SimpleTokenizer (ftfy + html.unescape)
    return CosineScorer("hpsv2", enc, _load_tokenizer(ctx, o.tokenizer), t, clean_text=True,
                        info={"checkpoint": o.checkpoint, "arch": o.arch, "transform": repr(t)})


class ICTOptions(Config):
    base: str = Field(LAION_VIT_H, description="base CLIPModel the ICT weights are loaded onto")
    weights: str = Field(ICT_WEIGHTS, description="ICT weights (transformers CLIPModel names, loaded non-strictly)")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the weights (only for trusted files)")


def make_ict(options: dict[str, Any], ctx: ScorerContext) -> CosineScorer:
    o = validate_config(ICTOptions, options, "scorer ict")
    model = _load_hf_clip_with_weights(ctx, o.base, o.weights, o.trust_pickle)
    enc = _encoder(ctx, ("hf_clip+weights", o.base, o.weights), model)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    # ICTHP's eval.py tokenises with HPSv2's open_clip get_tokenizer('ViT-H-14') (SimpleTokenizer)
    return CosineScorer("ict", enc, _load_tokenizer(ctx, o.base), t, clean_text=True,
                        info={"base": o.base, "weights": o.weights, "load": model.loaded_report, "transform": repr(t)})


class HPOptions(Config):
    base: str = Field(LAION_VIT_H, description="base CLIPModel the HP backbone weights are loaded onto")
    backbone: str = Field(HP_BACKBONE, description="HP backbone weights (loaded non-strictly)")
    head: str = Field(HP_HEAD, description="HP MLP head weights")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the weight files (only for trusted files)")


def make_hp(options: dict[str, Any], ctx: ScorerContext) -> ImageHeadScorer:
    o = validate_config(HPOptions, options, "scorer hp")
    model = _load_hf_clip_with_weights(ctx, o.base, o.backbone, o.trust_pickle)
    enc = _encoder(ctx, ("hf_clip+weights", o.base, o.backbone), model)
    t = ImageTransform(size=enc.image_size, mode="crop", crop_rounding="floor")
    head = _load_head(ctx, o.head, o.trust_pickle)
    return ImageHeadScorer("hp", enc, t, head, normalize_input=False, sigmoid=True,
                           info={"base": o.base, "backbone": o.backbone, "head": o.head,
                                 "load": model.loaded_report, "transform": repr(t)})


class ICTHPOptions(Config):
    base: str = Field(LAION_VIT_H, description="base CLIPModel of both the ICT and the HP model")
    weights: str = Field(ICT_WEIGHTS, description="ICT weights (as the ict scorer's weights)")
    backbone: str = Field(HP_BACKBONE, description="HP backbone weights (as the hp scorer's)")
    head: str = Field(HP_HEAD, description="HP MLP head weights (as the hp scorer's)")
    trust_pickle: bool = Field(False, description="allow a full unpickle of the weight files (only for trusted files)")


def make_ict_hp(options: dict[str, Any], ctx: ScorerContext) -> ProductScorer:
    """``ict_hp``: ICT x HP per image, the combined reward of the ICT/HP paper (its ``icthp`` scores).

    The ICT and HP models are the ones the ``ict`` and ``hp`` scorers load (one load per run when
    both are configured too; their image features are reused within a batch).
    """
    o = validate_config(ICTHPOptions, options, "scorer ict_hp")
    ict = make_ict({"base": o.base, "weights": o.weights, "trust_pickle": o.trust_pickle}, ctx)
    hp = make_hp({"base": o.base, "backbone": o.backbone, "head": o.head, "trust_pickle": o.trust_pickle}, ctx)
    return ProductScorer("ict_hp", ict, hp, info={"ict": ict.info, "hp": hp.info, "formula": "ict * hp"})
