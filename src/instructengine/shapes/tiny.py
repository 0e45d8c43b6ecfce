"""A tiny random-weight ShapesWorld-like model (registered as ``tiny_model`` kind ``shapes``): a 16x16
pixel-space U-Net, a one-layer CLIP text encoder and a word-level tokenizer, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from instructengine.train.tiny import COLOURS, SHAPES

__all__ = ["tiny_shapes_components"]


def tiny_shapes_components(seed: int = 0, prediction_type: str = "epsilon") -> dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "one", "two", *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), ",", "and"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", model_max_length=8)
    from transformers import CLIPTextConfig

    text_cfg = CLIPTextConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=8, pad_token_id=0,
                              bos_token_id=0, eos_token_id=1)
    return {
        "unet": UNet2DConditionModel(
            sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
            attention_head_dim=4, norm_num_groups=4,
        ),
        "text_encoder": CLIPTextModel(text_cfg), "tokenizer": tok,
        "scheduler": DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                   prediction_type=prediction_type, clip_sample=True),
    }
