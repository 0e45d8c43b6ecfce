"""Convert an OpenCLIP (or OpenAI CLIP) ViT state dict into a transformers ``CLIPModel``.

HPSv2 ships its fine-tuned ViT-H-14 as an open_clip checkpoint (``HPS_v2_compressed.pt``:
``{"state_dict": ...}``); OpenAI ships CLIP as TorchScript archives (``ViT-L-14.pt``, what
``clip.load`` reads and what ImageReward's CLIP score and aesthetic predictor use), whose state dict
has the same names plus three scalars (``input_resolution``, ``context_length``, ``vocab_size``,
which OpenAI's ``build_model`` deletes too). This module maps both onto ``transformers.CLIPModel``
so the project needs neither open_clip nor clip installed. The key mapping follows transformers'
``models/clip/convert_clip_original_pytorch_to_hf.py`` (OpenAI CLIP and open_clip's standard
``CLIP`` class use the same parameter names) and open_clip's ``transformer.py``
(``VisionTransformer`` / ``TextTransformer`` with packed ``in_proj`` attention):

==========================================  ===========================================================
open_clip                                    transformers CLIPModel
==========================================  ===========================================================
visual.conv1.weight                          vision_model.embeddings.patch_embedding.weight
visual.class_embedding                       vision_model.embeddings.class_embedding
visual.positional_embedding                  vision_model.embeddings.position_embedding.weight
visual.ln_pre                                vision_model.pre_layrnorm
visual.transformer.resblocks.{i}.ln_1/ln_2   vision_model.encoder.layers.{i}.layer_norm1/layer_norm2
...attn.in_proj_weight / in_proj_bias        ...self_attn.{q,k,v}_proj (split in three along dim 0)
...attn.out_proj                             ...self_attn.out_proj
...mlp.c_fc / mlp.c_proj                     ...mlp.fc1 / mlp.fc2
visual.ln_post                               vision_model.post_layernorm
visual.proj  (width x embed)                 visual_projection.weight  (transposed)
token_embedding / positional_embedding       text_model.embeddings.token_embedding / position_embedding
transformer.resblocks.{i}.*                  text_model.encoder.layers.{i}.*  (as above)
ln_final                                     text_model.final_layer_norm
text_projection  (width x embed)             text_projection.weight  (transposed)
logit_scale                                  logit_scale
==========================================  ===========================================================

Sizes are read from the tensors; head counts cannot be, so they come from the architecture name
(open_clip's ``model_configs/*.json``: ViT-H-14 has 80-wide vision heads, text heads are
``width // 64``) or are given explicitly. Layer scale, attention pooling, or projection biases
(variants the plain ViT-H-14 does not use) are rejected with an error rather than dropped.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = [
    "OPEN_CLIP_HEAD_WIDTHS",
    "clip_config_from_open_clip",
    "convert_open_clip_state_dict",
    "load_open_clip_as_clip",
    "load_openai_clip_as_clip",
]

#: vision head width of open_clip architectures whose heads are not 64 wide (model_configs/*.json)
OPEN_CLIP_HEAD_WIDTHS: dict[str, int] = {"ViT-H-14": 80, "ViT-H-16": 80, "ViT-g-14": 88, "ViT-bigG-14": 104}

_BLOCK_MAP = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_IGNORED = re.compile(r"(^|\.)attn_mask$|^(input_resolution|context_length|vocab_size)$")
#: keys every plain ViT CLIP state dict has; their absence means another layout (ResNet CLIP, a
#: transformers state dict, a reward head ...)
_REQUIRED = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
             "visual.transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight",
             "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight")


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Unwrap ``{"state_dict": ...}`` and drop a DistributedDataParallel ``module.`` prefix."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out = {}
    for k, v in sd.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not idx:
        raise ValueError(f"open_clip state dict has no transformer blocks under {prefix!r}")
    if idx != set(range(len(idx))):
        raise ValueError(f"open_clip state dict: blocks under {prefix!r} are not numbered 0..N-1: {sorted(idx)}")
    return len(idx)


def clip_config_from_open_clip(
    state_dict: Mapping[str, Any],
    arch: str | None = None,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    quick_gelu: bool = False,
    eos_token_id: int | None = None,
):
    """Build the ``CLIPConfig`` matching an open_clip ViT state dict.

    Args:
        arch: open_clip architecture name (e.g. "ViT-H-14"); sets the vision head width.
        vision_heads / text_heads: explicit head counts (override ``arch``).
        quick_gelu: True for OpenAI-trained weights (``QuickGELU``); open_clip's LAION ViT-H-14
            and HPSv2 use exact GELU.
        eos_token_id: the end-of-text id used for pooling; default ``vocab_size - 1`` (CLIP's
            ``<|endoftext|>`` is the last token, which is also what open_clip's ``argmax`` finds).
    """
    from transformers import CLIPConfig

    sd = _strip_prefix(state_dict)
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise ValueError(
            f"not an OpenAI/open_clip ViT CLIP state dict: it lacks {missing[:3]} (first keys: {list(sd)[:4]}); "
            "pass a ViT checkpoint (OpenAI ViT-L-14.pt, open_clip/HPSv2 .pt) or a transformers CLIP folder / Hub id"
        )
    conv = sd["visual.conv1.weight"]
    v_width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(sd["visual.positional_embedding"].shape[0])
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise ValueError(f"visual.positional_embedding has {n_pos} rows, not 1 + a square grid")
    v_layers = _count_blocks(sd, "visual.transformer.resblocks.")
    v_inter = int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    embed_dim = int(sd["visual.proj"].shape[1])

    vocab, t_width = (int(s) for s in sd["token_embedding.weight"].shape)
    ctx = int(sd["positional_embedding"].shape[0])
    t_layers = _count_blocks(sd, "transformer.resblocks.")
    t_inter = int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])

    head_width = OPEN_CLIP_HEAD_WIDTHS.get(arch or "", 64)
    for name, width, heads, hw in (("vision", v_width, vision_heads, head_width), ("text", t_width, text_heads, 64)):
        if heads is None and width % hw:
            raise ValueError(
                f"{name} width {width} is not divisible by the head width {hw} of arch {arch!r}; "
                f"pass {name}_heads explicitly"
            )
        if heads is not None and (heads < 1 or width % heads):
            raise ValueError(f"{name} width {width} is not divisible by {name}_heads={heads}")
    v_heads = vision_heads or v_width // head_width
    t_heads = text_heads or t_width // 64
    act = "quick_gelu" if quick_gelu else "gelu"
    eos = vocab - 1 if eos_token_id is None else eos_token_id
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=t_width, intermediate_size=t_inter, num_hidden_layers=t_layers,
            num_attention_heads=t_heads, max_position_embeddings=ctx, hidden_act=act, projection_dim=embed_dim,
            bos_token_id=vocab - 2, eos_token_id=eos, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=v_width, intermediate_size=v_inter, num_hidden_layers=v_layers, num_attention_heads=v_heads,
            image_size=grid * patch, patch_size=patch, hidden_act=act, projection_dim=embed_dim,
        ),
        projection_dim=embed_dim,
    )


def _convert_block(sd: Mapping[str, Any], src: str, dst: str, out: dict[str, Any], used: set[str]) -> None:
    w = sd[src + "attn.in_proj_weight"]
    b = sd[src + "attn.in_proj_bias"]
    for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w.chunk(3, dim=0), b.chunk(3, dim=0)):
        out[f"{dst}self_attn.{name}.weight"] = wi.clone()
        out[f"{dst}self_attn.{name}.bias"] = bi.clone()
    used.update({src + "attn.in_proj_weight", src + "attn.in_proj_bias"})
    for old, new in _BLOCK_MAP.items():
        for p in ("weight", "bias"):
            out[f"{dst}{new}.{p}"] = sd[f"{src}{old}.{p}"]
            used.add(f"{src}{old}.{p}")


def convert_open_clip_state_dict(state_dict: Mapping[str, Any], config) -> dict[str, Any]:
    """Map an open_clip ViT state dict to ``CLIPModel`` parameter names (see the module table).

    Raises:
        ValueError: keys the mapping does not know (layer scale, attention pooling, biases on the
            projections ...), so that no weight is silently dropped.
    """
    sd = _strip_prefix(state_dict)
    out: dict[str, Any] = {}
    used: set[str] = set()

    def take(src: str, dst: str, transpose: bool = False) -> None:
        t = sd[src]
        out[dst] = t.t().contiguous() if transpose else t
        used.add(src)

    take("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    take("visual.class_embedding", "vision_model.embeddings.class_embedding")
    take("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    for p in ("weight", "bias"):
        take(f"visual.ln_pre.{p}", f"vision_model.pre_layrnorm.{p}")
        take(f"visual.ln_post.{p}", f"vision_model.post_layernorm.{p}")
        take(f"ln_final.{p}", f"text_model.final_layer_norm.{p}")
    take("visual.proj", "visual_projection.weight", transpose=True)
    for i in range(config.vision_config.num_hidden_layers):
        _convert_block(sd, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", out, used)

    take("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    take("positional_embedding", "text_model.embeddings.position_embedding.weight")
    if "text_projection.weight" in sd:  # open_clip variants with an nn.Linear text projection
        take("text_projection.weight", "text_projection.weight")
    else:
        take("text_projection", "text_projection.weight", transpose=True)
    for i in range(config.text_config.num_hidden_layers):
        _convert_block(sd, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", out, used)
    take("logit_scale", "logit_scale")

    unknown = sorted(k for k in sd if k not in used and not _IGNORED.search(k))
    if unknown:
        raise ValueError(
            f"open_clip state dict has {len(unknown)} keys this converter does not map "
            f"(e.g. {unknown[:5]}); only the plain ViT CLIP layout (as ViT-H-14) is supported"
        )
    return out


def load_open_clip_as_clip(
    state_dict: Mapping[str, Any],
    arch: str | None = None,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    quick_gelu: bool = False,
    eos_token_id: int | None = None,
):
    """Build a ``CLIPModel`` (eval mode) holding the weights of an open_clip ViT state dict.

    Raises:
        ValueError: unmapped keys, or parameters of the model that the state dict left unset.
    """
    from accelerate import init_empty_weights
    from transformers import CLIPModel

    config = clip_config_from_open_clip(state_dict, arch, vision_heads, text_heads, quick_gelu, eos_token_id)
    converted = convert_open_clip_state_dict(state_dict, config)
    with init_empty_weights():  # parameters on "meta": no time spent on a random init of ~1B weights
        model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"open_clip -> CLIPModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def load_openai_clip_as_clip(state_dict: Mapping[str, Any]):
    """An OpenAI CLIP ViT checkpoint (``clip.load``'s ``ViT-L-14.pt`` state dict) as a ``CLIPModel``.

    OpenAI's ``clip/model.py`` ``build_model`` reads the sizes from the tensors as
    :func:`clip_config_from_open_clip` does, uses ``width // 64`` heads in both towers and
    ``QuickGELU`` activations; the parameter names are open_clip's.

    Raises:
        ValueError: not a ViT CLIP state dict (e.g. a ResNet CLIP), or keys the mapping does not know.
    """
    return load_open_clip_as_clip(state_dict, arch=None, quick_gelu=True)
