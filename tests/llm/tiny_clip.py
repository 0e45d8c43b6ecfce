"""A tiny CLIP (random weights, real transformers classes) with a word-level tokenizer, built offline."""

from __future__ import annotations


def tiny_tokenizer(words):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]", model_max_length=16
    )


def tiny_text_config(vocab_size):
    return dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=16, max_position_embeddings=16, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )


def tiny_clip_model(tokenizer, seed=0):
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=8, projection_dim=16)
    return CLIPModel(CLIPConfig(text_config=tiny_text_config(len(tokenizer)), vision_config=vision, projection_dim=16)).eval()


def tiny_clip_embedder(words, seed=0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from instructengine.backends import CLIPTextEmbedder

    torch.manual_seed(seed)
    tok = tiny_tokenizer(words)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_text_config(len(tok))))
    return CLIPTextEmbedder(model, tok, batch_size=4)
