"""Tiny random models in the exact on-disk formats the real scorer weights come in.

Every builder writes files a scorer factory then loads by local path, through the same code that
loads the real checkpoints from the Hub: a transformers CLIP folder (PickScore, CLIP, ICT/HP base),
an open_clip state dict (HPSv2), BLIP's original layout (BLIP score, ImageReward), MLP heads.
Also reference forwards written from the official architectures (open_clip's ViT/TextTransformer,
BLIP's timm ViT), used to check the converters independently of transformers.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from instructengine.train.tiny import bytes_to_unicode  # CLIP's byte -> printable character table

WORDS = ["a", "red", "blue", "green", "car", "dog", "cat", "circle", "square", "two", "three", "on", "the", "of",
         "plate", "spoon", "amp", "and"]


# ----------------------------------------------------------------------------------------- tokenizers


def write_clip_tokenizer(folder: Path) -> tuple[int, int]:
    """A CLIP BPE tokenizer in the real vocabulary layout, with merges for a few words.

    As in CLIP's ``bpe_simple_vocab_16e6``: the 256 byte characters, the same with ``</w>``, one
    entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (so any text is encodable and
    ``!`` is id 0). Returns (vocab_size, eos_id = vocab_size - 1).
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for w in WORDS:
        # merges that build each word left to right, the last with the end-of-word marker
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            if f"{a} {b}" not in merges:
                merges.append(f"{a} {b}")
                tokens.append(a + b)
            pieces = [a + b] + pieces[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    tok.save_pretrained(str(folder))
    return len(vocab), len(vocab) - 1


def write_bert_tokenizer(folder: Path) -> int:
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(string.ascii_lowercase) + [",", "."]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    return len(tokens)


# ----------------------------------------------------------------------------------------- CLIP (transformers)


def tiny_clip_config(vocab_size: int, eos_id: int, image_size: int = 32, projection_dim: int = 8):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu",
                         bos_token_id=eos_id - 1, eos_token_id=eos_id, pad_token_id=0, projection_dim=projection_dim),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, hidden_act="gelu", projection_dim=projection_dim),
        projection_dim=projection_dim,
    )


def write_tiny_clip(folder: Path, seed: int = 0):
    """transformers CLIPModel + its tokenizer in one folder (like openai/clip-vit-large-patch14)."""
    from transformers import CLIPModel

    vocab, eos = write_clip_tokenizer(folder)
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(vocab, eos)).eval()
    model.save_pretrained(str(folder))
    return model


def write_reward_mlp(path: Path, input_size: int, hidden: int = 12, seed: int = 0, prefix: str = "") -> dict:
    torch.manual_seed(seed)
    sizes = [input_size, hidden, 10, 8, 4, 1]
    sd = {}
    for (i, (a, b)) in zip((0, 2, 4, 6, 7), zip(sizes, sizes[1:])):
        sd[f"{prefix}layers.{i}.weight"] = torch.randn(b, a) * 0.5
        sd[f"{prefix}layers.{i}.bias"] = torch.randn(b) * 0.1
    if path is not None:
        torch.save(sd, path)
    return sd


# ----------------------------------------------------------------------------------------- open_clip


def open_clip_state_dict(vocab: int, seed: int = 0, width: int = 16, heads: int = 2, layers: int = 2,
                         ctx: int = 16, image: int = 32, patch: int = 8, embed: int = 8) -> dict[str, torch.Tensor]:
    """Random tensors with open_clip's ViT CLIP names and shapes (ViT-H-14 layout, shrunk)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    def ln(prefix):
        return {f"{prefix}.weight": 1 + r(width, s=0.1), f"{prefix}.bias": r(width, s=0.1)}

    def block(prefix):
        out = {}
        out.update(ln(prefix + "ln_1"))
        out.update(ln(prefix + "ln_2"))
        out[prefix + "attn.in_proj_weight"] = r(3 * width, width)
        out[prefix + "attn.in_proj_bias"] = r(3 * width, s=0.05)
        out[prefix + "attn.out_proj.weight"] = r(width, width)
        out[prefix + "attn.out_proj.bias"] = r(width, s=0.05)
        out[prefix + "mlp.c_fc.weight"] = r(4 * width, width)
        out[prefix + "mlp.c_fc.bias"] = r(4 * width, s=0.05)
        out[prefix + "mlp.c_proj.weight"] = r(width, 4 * width)
        out[prefix + "mlp.c_proj.bias"] = r(width, s=0.05)
        return out

    grid = image // patch
    sd = {
        "visual.conv1.weight": r(width, 3, patch, patch),
        "visual.class_embedding": r(width),
        "visual.positional_embedding": r(grid * grid + 1, width),
        "visual.proj": r(width, embed),
        "token_embedding.weight": r(vocab, width),
        "positional_embedding": r(ctx, width),
        "text_projection": r(width, embed),
        "logit_scale": torch.tensor(4.6052),
    }
    sd.update(ln("visual.ln_pre"))
    sd.update(ln("visual.ln_post"))
    sd.update(ln("ln_final"))
    for i in range(layers):
        sd.update(block(f"visual.transformer.resblocks.{i}."))
        sd.update(block(f"transformer.resblocks.{i}."))
    return sd


def _open_clip_block(x: torch.Tensor, sd: dict, prefix: str, heads: int, attn_mask=None, quick_gelu: bool = False) -> torch.Tensor:
    """open_clip ResidualAttentionBlock: x + attn(ln_1(x)); x + mlp(ln_2(x)) with nn.MultiheadAttention."""
    width = x.shape[-1]
    mha = nn.MultiheadAttention(width, heads, batch_first=True)
    mha.load_state_dict({
        "in_proj_weight": sd[prefix + "attn.in_proj_weight"], "in_proj_bias": sd[prefix + "attn.in_proj_bias"],
        "out_proj.weight": sd[prefix + "attn.out_proj.weight"], "out_proj.bias": sd[prefix + "attn.out_proj.bias"],
    })
    mha.eval()
    h = F.layer_norm(x, (width,), sd[prefix + "ln_1.weight"], sd[prefix + "ln_1.bias"])
    x = x + mha(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
    h = F.layer_norm(x, (width,), sd[prefix + "ln_2.weight"], sd[prefix + "ln_2.bias"])
    h = F.linear(h, sd[prefix + "mlp.c_fc.weight"], sd[prefix + "mlp.c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h) if quick_gelu else F.gelu(h)
    return x + F.linear(h, sd[prefix + "mlp.c_proj.weight"], sd[prefix + "mlp.c_proj.bias"])


@torch.no_grad()
def open_clip_encode_image(sd: dict, pixels: torch.Tensor, heads: int, layers: int, quick_gelu: bool = False) -> torch.Tensor:
    """open_clip VisionTransformer.forward (cls pooling, ln_post, @ proj)."""
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=sd["visual.conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    w = x.shape[-1]
    x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(layers):
        x = _open_clip_block(x, sd, f"visual.transformer.resblocks.{i}.", heads, quick_gelu=quick_gelu)
    x = F.layer_norm(x[:, 0], (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x @ sd["visual.proj"]


@torch.no_grad()
def open_clip_encode_text(sd: dict, tokens: torch.Tensor, heads: int, layers: int, quick_gelu: bool = False) -> torch.Tensor:
    """open_clip CLIP.encode_text: causal mask, ln_final, features at argmax(token id), @ text_projection."""
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"][: tokens.shape[1]]
    n = tokens.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(layers):
        x = _open_clip_block(x, sd, f"transformer.resblocks.{i}.", heads, attn_mask=mask, quick_gelu=quick_gelu)
    w = x.shape[-1]
    x = F.layer_norm(x, (w,), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ sd["text_projection"]


# ----------------------------------------------------------------------------------------- OpenAI CLIP (clip.load layout)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttentionBlock(nn.Module):
    """OpenAI ``clip/model.py`` ResidualAttentionBlock (sequence-first, QuickGELU MLP)."""

    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        from collections import OrderedDict

        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[_ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class _VisionTransformer(nn.Module):
    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, embed: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAIClip(nn.Module):
    """OpenAI ``clip/model.py`` CLIP (ViT image tower), shrunk: the parameter names of ``ViT-L-14.pt``.

    ``forward(image, text)`` returns ``(encode_image(image), encode_text(text))`` as OpenAI's code
    computes them (text pooled at ``text.argmax(-1)``, the end-of-text id being the largest).
    Buffers ``input_resolution`` / ``context_length`` / ``vocab_size`` stand for the scalars the
    released TorchScript archives carry in their state dict.
    """

    def __init__(self, vocab: int, width: int = 128, heads: int = 2, layers: int = 2, ctx: int = 16,
                 image: int = 32, patch: int = 8, embed: int = 8):
        super().__init__()
        self.visual = _VisionTransformer(image, patch, width, layers, heads, embed)
        mask = torch.full((ctx, ctx), float("-inf")).triu(1)
        self.transformer = _Transformer(width, layers, heads, attn_mask=mask)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        self.register_buffer("input_resolution", torch.tensor(image))
        self.register_buffer("context_length", torch.tensor(ctx))
        self.register_buffer("vocab_size", torch.tensor(vocab))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        return self.visual(image), self.encode_text(text)


def openai_clip(vocab: int, seed: int = 0) -> OpenAIClip:
    """A tiny :class:`OpenAIClip` holding random weights (open_clip_state_dict's, same names).

    Width 128 with 2 heads: OpenAI's ``build_model`` derives the head count as ``width // 64``.
    """
    model = OpenAIClip(vocab).eval()
    sd = open_clip_state_dict(vocab, seed=seed, width=128, heads=2)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"input_resolution", "context_length", "vocab_size"}, (missing, unexpected)
    return model


def write_openai_clip_checkpoint(path: Path, vocab: int, seed: int = 0, jit: bool = True) -> OpenAIClip:
    """Save a tiny OpenAI-layout CLIP as ``clip.load`` finds it: a traced TorchScript archive or a state dict."""
    model = openai_clip(vocab, seed)
    if jit:
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long)))
        traced.save(str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


# ----------------------------------------------------------------------------------------- BLIP (original layout)


def write_med_config(path: Path, vocab_size: int) -> dict:
    cfg = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 16, "initializer_range": 0.02, "intermediate_size": 32,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
        "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size,
        "encoder_width": 64, "add_cross_attention": True,
    }
    path.write_text(json.dumps(cfg))
    return cfg


def blip_state_dict(vocab_size: int, seed: int = 0, prefix: str = "", width: int = 64, depth: int = 2,
                    image: int = 32, patch: int = 8, embed: int = 8) -> dict[str, torch.Tensor]:
    """BLIP's original names: ``visual_encoder.*`` (timm ViT), ``text_encoder.*`` (med BERT), projections."""
    from transformers import BlipTextConfig, BlipTextModel

    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd: dict[str, torch.Tensor] = {}
    v = prefix + "visual_encoder."
    grid = image // patch
    sd[v + "cls_token"] = r(1, 1, width)
    sd[v + "pos_embed"] = r(1, grid * grid + 1, width)
    sd[v + "patch_embed.proj.weight"] = r(width, 3, patch, patch)
    sd[v + "patch_embed.proj.bias"] = r(width, s=0.05)
    for i in range(depth):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"] = 1 + r(width, s=0.1)
            sd[b + n + ".bias"] = r(width, s=0.1)
        sd[b + "attn.qkv.weight"] = r(3 * width, width)
        sd[b + "attn.qkv.bias"] = r(3 * width, s=0.05)
        sd[b + "attn.proj.weight"] = r(width, width)
        sd[b + "attn.proj.bias"] = r(width, s=0.05)
        sd[b + "mlp.fc1.weight"] = r(4 * width, width)
        sd[b + "mlp.fc1.bias"] = r(4 * width, s=0.05)
        sd[b + "mlp.fc2.weight"] = r(width, 4 * width)
        sd[b + "mlp.fc2.bias"] = r(width, s=0.05)
    sd[v + "norm.weight"] = 1 + r(width, s=0.1)
    sd[v + "norm.bias"] = r(width, s=0.1)

    # med.py's BertModel uses the same parameter names as BlipTextModel; random init with a fixed seed
    torch.manual_seed(seed)
    text = BlipTextModel(BlipTextConfig(vocab_size=vocab_size, hidden_size=16, encoder_hidden_size=width,
                                        intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=40, bos_token_id=None, sep_token_id=None,
                                        eos_token_id=None, pad_token_id=0), add_pooling_layer=False)
    for k, t in text.state_dict().items():
        sd[prefix + "text_encoder." + k] = t.clone()
    sd[prefix + "text_encoder.embeddings.position_ids"] = torch.arange(40).unsqueeze(0)  # as BLIP saves it
    sd[prefix + "vision_proj.weight"] = r(embed, width)
    sd[prefix + "vision_proj.bias"] = r(embed, s=0.05)
    sd[prefix + "text_proj.weight"] = r(embed, 16)
    sd[prefix + "text_proj.bias"] = r(embed, s=0.05)
    # BLIP pre-training checkpoints also hold momentum encoders and a decoder, which scoring ignores
    sd[prefix + "visual_encoder_m.cls_token"] = r(1, 1, width)
    sd[prefix + "text_decoder.cls.predictions.bias"] = r(vocab_size)
    return sd


@torch.no_grad()
def blip_vit_reference(sd: dict, pixels: torch.Tensor, prefix: str = "", depth: int = 2) -> torch.Tensor:
    """BLIP models/vit.py VisionTransformer.forward (timm blocks, LayerNorm eps 1e-6)."""
    v = prefix + "visual_encoder."
    w = sd[v + "patch_embed.proj.weight"]
    width, heads = w.shape[0], w.shape[0] // 64
    x = F.conv2d(pixels, w, sd[v + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[v + "pos_embed"]
    B, N, C = x.shape
    for i in range(depth):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (C,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, val = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
        h = (attn @ val).transpose(1, 2).reshape(B, N, C)
        x = x + F.linear(h, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (C,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])), sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + h
    return F.layer_norm(x, (C,), sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)


@torch.no_grad()
def bert_text_reference(sd: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """BLIP's text encoder in 'text' mode is a plain BERT: run transformers' BertModel on its weights."""
    from transformers import BertConfig, BertModel

    t = prefix + "text_encoder."
    vocab, hidden = sd[t + "embeddings.word_embeddings.weight"].shape
    model = BertModel(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=40, type_vocab_size=1,
                                 hidden_act="gelu", layer_norm_eps=1e-12), add_pooling_layer=False).eval()
    own = {k: v for k, v in sd.items() if k.startswith(t) and ".crossattention." not in k and not k.endswith("position_ids")}
    own = {k[len(t):]: v for k, v in own.items()}
    own["embeddings.token_type_embeddings.weight"] = torch.zeros(1, hidden)  # med.py has no token types
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert not unexpected and all(m.endswith(("position_ids", "token_type_ids")) for m in missing), (missing, unexpected)
    return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
