"""Tiny, randomly initialised SD1.5-like and SDXL-like models built from configs (bundles add theirs),
and a small synthetic preference dataset -- for tests, the CPU demo and benchmarks.

Same classes and code paths as the real models (diffusers ``UNet2DConditionModel`` /
``AutoencoderKL``, transformers ``CLIPTextModel(WithProjection)``, ``CLIPTokenizer`` built from
a byte-level vocabulary with no merges, a word-level ``PreTrainedTokenizerFast``), no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "save_model",
    "tiny_clip_model",
    "tiny_clip_tokenizer",
    "tiny_components",
    "tiny_sd15_components",
    "tiny_sdxl_components",
    "write_candidates",
    "write_samples",
]

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "bar")


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tiny_clip_tokenizer(max_length: int = 16) -> Any:
    """A byte-level ``CLIPTokenizer`` without merges (one token per character), 514 tokens."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _text_config(tok: Any, hidden: int, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tok.model_max_length, layer_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        projection_dim=projection or hidden,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=32,
    )


def tiny_sd15_components(seed: int = 0, prediction_type: str = "epsilon") -> dict[str, Any]:
    """Random tiny SD1.5-layout components (16x16 images, 8x8 latents)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    return {
        "unet": UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
            attention_head_dim=4, norm_num_groups=4,
        ),
        "vae": _vae(), "text_encoder": CLIPTextModel(_text_config(tok, 16)), "tokenizer": tok,
        "scheduler": DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   prediction_type=prediction_type),
    }


def tiny_sdxl_components(seed: int = 0, prediction_type: str = "epsilon") -> dict[str, Any]:
    """Random tiny SDXL-layout components (two text encoders, text_time conditioning)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, tok2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    return {
        "unet": UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=4, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 * 4 + 16, transformer_layers_per_block=1,
        ),
        "vae": _vae(),
        "text_encoder": CLIPTextModel(_text_config(tok, 16)),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(tok2, 16, projection=16)),
        "tokenizer": tok, "tokenizer_2": tok2,
        "scheduler": DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   prediction_type=prediction_type),
    }


def tiny_components(kind: str, seed: int = 0, prediction_type: str = "epsilon") -> dict[str, Any]:
    """Random tiny components of a model kind: sd15, sdxl, or one a bundle registers (registry kind
    ``tiny_model``, a factory ``(seed, prediction_type) -> components``)."""
    from instructengine import registry

    return registry.instantiate("tiny_model", kind, seed=seed, prediction_type=prediction_type, where="tiny model kind")


def save_model(kind: str, components: dict[str, Any], path: str | Path) -> Path:
    """Save components in diffusers layout: a full pipeline for sd15/sdxl, one sub-folder per component
    (``save_pretrained``) for any other kind."""
    path = Path(path)
    if kind == "sd15":
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(path)
    elif kind == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline(**components).save_pretrained(path)
    else:
        for name, module in components.items():
            module.save_pretrained(path / name)
    return path


def tiny_clip_model(path: str | Path, image_size: int = 16, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` + tokenizer (a differentiable reward for ReFL tests)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=4, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_channels=3),
        projection_dim=16,
    )
    path = Path(path)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _scene(colour: str, shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    h, w = (size // 2, size // 2) if shape == "square" else (size // 4, (3 * size) // 4)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    img[top:top + h, left:left + w] = COLOURS[colour]
    return img


def write_samples(root: str | Path, n: int = 8, size: int = 16, seed: int = 0) -> Path:
    """A synthetic preference dataset in the ``samples.parquet`` format (x1/x2 differ in colour)."""
    import pandas as pd
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        c1, c2 = rng.choice(names, 2, replace=False)
        shape = SHAPES[i % 2]
        for k, c in ((1, c1), (2, c2)):
            Image.fromarray(_scene(c, shape, size, rng)).save(root / "images" / f"{i}_{k}.png")
        rows.append({
            "sample_id": f"s{i}", "theme": "toy", "subtopic": "colour", "entity": shape, "dimension": "content",
            "instruction_1": f"a {c1} {shape}", "instruction_2": f"a {c2} {shape}",
            "image_1": f"images/{i}_1.png", "image_2": f"images/{i}_2.png",
            "seed_1": 2 * i, "seed_2": 2 * i + 1, "score_1": 0.9, "score_2": 0.8,
        })
    pd.DataFrame(rows).to_parquet(root / "samples.parquet", index=False)
    return root


def write_candidates(root: str | Path, prompts: int = 4, per_prompt: int = 3, size: int = 16, seed: int = 0) -> Path:
    """A synthetic candidates table (prompt, image, reward) for the reward-picked baseline."""
    import pandas as pd
    from PIL import Image

    root = Path(root)
    (root / "candidates").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(prompts):
        colour = list(COLOURS)[i % len(COLOURS)]
        for j in range(per_prompt):
            drawn = colour if j == 0 else list(COLOURS)[(i + j) % len(COLOURS)]
            Image.fromarray(_scene(drawn, "square", size, rng)).save(root / "candidates" / f"{i}_{j}.png")
            rows.append({"prompt": f"a {colour} square", "image": f"candidates/{i}_{j}.png",
                         "reward": float(1.0 if j == 0 else rng.uniform(0, 0.5)), "seed": j})
    pd.DataFrame(rows).to_parquet(root / "candidates.parquet", index=False)
    return root
