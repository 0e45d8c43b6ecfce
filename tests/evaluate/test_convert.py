"""Converters checked against reference forwards written from the official architectures."""

from __future__ import annotations

import pytest
import torch

import tiny
from instructengine.scorers.convert_blip import load_blip_parts
from instructengine.scorers.convert_openclip import clip_config_from_open_clip, load_open_clip_as_clip


def test_open_clip_to_transformers_matches_open_clip_forward(tmp_path):
    vocab, eos = tiny.write_clip_tokenizer(tmp_path / "tok")
    sd = tiny.open_clip_state_dict(vocab)
    model = load_open_clip_as_clip({"state_dict": {"module." + k: v for k, v in sd.items()}}, vision_heads=2, text_heads=2)
    cfg = model.config
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size, cfg.projection_dim) == (32, 8, 8)
    assert cfg.text_config.eos_token_id == eos and cfg.vision_config.hidden_act == "gelu"

    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32)
    ref_img = tiny.open_clip_encode_image(sd, pixels, heads=2, layers=2)
    with torch.no_grad():
        got_img = model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(got_img, ref_img, rtol=1e-4, atol=1e-5)

    # open_clip pads with 0 after <|endoftext|> and pools at argmax (the eot id is the largest)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[0, :5] = torch.tensor([eos - 1, 3, 7, 11, eos])
    tokens[1, :8] = torch.tensor([eos - 1, 5, 5, 9, 2, 40, 41, eos])
    ref_txt = tiny.open_clip_encode_text(sd, tokens, heads=2, layers=2)
    with torch.no_grad():
        got_txt = model.get_text_features(input_ids=tokens).pooler_output
    torch.testing.assert_close(got_txt, ref_txt, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.logit_scale.detach(), sd["logit_scale"])


def test_open_clip_head_counts_and_errors(tmp_path):
    sd = tiny.open_clip_state_dict(50, width=64 * 2, heads=2)
    assert clip_config_from_open_clip(sd).vision_config.num_attention_heads == 2  # 128 // 64
    sd160 = tiny.open_clip_state_dict(50, width=160)
    cfg = clip_config_from_open_clip(sd160, arch="ViT-H-14", text_heads=5)
    assert (cfg.vision_config.num_attention_heads, cfg.text_config.num_attention_heads) == (2, 5)  # 160 // 80
    with pytest.raises(ValueError, match="vision width 160 is not divisible by the head width 64"):
        clip_config_from_open_clip(sd160, text_heads=5)  # 160 is not a multiple of 64: heads must be given
    with pytest.raises(ValueError, match="vision_heads=3"):
        clip_config_from_open_clip(sd160, vision_heads=3)
    bad = dict(tiny.open_clip_state_dict(50))
    bad["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(16)
    with pytest.raises(ValueError, match="does not map"):
        load_open_clip_as_clip(bad, vision_heads=2, text_heads=2)


def test_blip_original_layout_matches_reference_vit_and_bert(tmp_path):
    vocab = tiny.write_bert_tokenizer(tmp_path / "bert")
    med = tiny.write_med_config(tmp_path / "med_config.json", vocab)
    sd = tiny.blip_state_dict(vocab)
    parts = load_blip_parts({"model": sd}, tmp_path / "med_config.json")
    assert parts.vision.config.layer_norm_eps == 1e-6 and parts.vision.config.num_attention_heads == 1
    assert parts.text.config.encoder_hidden_size == 64 and med["hidden_size"] == parts.text.config.hidden_size

    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = parts.vision(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, tiny.blip_vit_reference(sd, pixels), rtol=1e-4, atol=1e-5)

    ids = torch.tensor([[2, 6, 8, 3, 0, 0], [2, 7, 9, 10, 11, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        got_t = parts.text(input_ids=ids, attention_mask=mask).last_hidden_state
    ref_t = tiny.bert_text_reference(sd, ids, mask)
    torch.testing.assert_close(got_t[mask.bool()], ref_t[mask.bool()], rtol=1e-4, atol=1e-5)


def test_blip_loader_rejects_wrong_prefix_and_vocab(tmp_path):
    vocab = tiny.write_bert_tokenizer(tmp_path / "bert")
    tiny.write_med_config(tmp_path / "med.json", vocab)
    sd = tiny.blip_state_dict(vocab, prefix="blip.")
    with pytest.raises(ValueError, match="no BLIP weights"):
        load_blip_parts(sd, tmp_path / "med.json", prefix="")
    tiny.write_med_config(tmp_path / "med2.json", vocab + 1)
    with pytest.raises(ValueError, match="vocab_size"):
        load_blip_parts(sd, tmp_path / "med2.json", prefix="blip.")
    parts = load_blip_parts(sd, tmp_path / "med.json", prefix="blip.", with_projections=False)
    assert parts.vision_proj is None


def test_openai_clip_layout_matches_openai_forward_and_rejects_resnets(tmp_path):
    from instructengine.scorers.convert_openclip import load_openai_clip_as_clip
    from instructengine.scorers.weights import load_state_dict

    vocab, eos = tiny.write_clip_tokenizer(tmp_path / "tok")
    ref = tiny.write_openai_clip_checkpoint(tmp_path / "ViT-L-14.pt", vocab, seed=6, jit=True)
    sd = load_state_dict(tmp_path / "ViT-L-14.pt", "CLIP checkpoint")  # TorchScript archive -> state dict
    assert {"input_resolution", "context_length", "vocab_size"} <= set(sd)
    model = load_openai_clip_as_clip(sd)
    cfg = model.config
    assert (cfg.vision_config.num_attention_heads, cfg.text_config.num_attention_heads) == (2, 2)  # width // 64
    assert cfg.text_config.hidden_act == "quick_gelu"
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[0, :4] = torch.tensor([eos - 1, 300, 301, eos])
    tokens[1, :6] = torch.tensor([eos - 1, 5, 6, 7, 8, eos])
    with torch.no_grad():
        ref_img, ref_txt = ref(pixels, tokens)
        got_img = model.get_image_features(pixel_values=pixels).pooler_output
        got_txt = model.get_text_features(input_ids=tokens).pooler_output
    torch.testing.assert_close(got_img, ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_txt, ref_txt, rtol=1e-4, atol=1e-5)

    resnet = {"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.attnpool.positional_embedding": torch.zeros(50, 64),
              "token_embedding.weight": torch.zeros(10, 8)}
    with pytest.raises(ValueError, match=r"not an OpenAI/open_clip ViT CLIP state dict: it lacks \['visual.positional_embedding'"):
        load_openai_clip_as_clip(resnet)
