"""Each scorer, built by its factory from tiny weights on disk, through the code path the real weights take."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tiny
from instructengine.scorers.heads import RewardMLP
from instructengine.scorers.preprocess import ImageTransform
from instructengine.scorers import ScorerContext, build_scorer, score_columns
from instructengine.scorers.blip_scorers import IMAGEREWARD_MEAN, IMAGEREWARD_STD

PROMPTS = ["a red car", "two blue dogs", "a green circle on the square", "a red car"]


def _images(n: int = 4, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    tiny.write_tiny_clip(d, seed=0)
    return d


def _reference_cosine(model_dir, images, prompts, transform):
    """Independent path: CLIPModel.forward's logits_per_image / logit_scale.exp()."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out = []
    for im, p in zip(images, prompts):
        t = tok([p], padding=True, return_tensors="pt")
        with torch.no_grad():
            o = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], pixel_values=transform([im]))
        out.append((o.logits_per_image / model.logit_scale.exp()).item())
    return np.array(out)


def test_pickscore_and_clip_are_cosines_with_their_own_crop(clip_dir):
    ctx = ScorerContext()
    images = _images()
    pick = build_scorer("pickscore", {"model": str(clip_dir), "processor": str(clip_dir)}, ctx)
    clip = build_scorer("clip", {"model": str(clip_dir)}, ctx)
    got_pick = score_columns(pick, images, PROMPTS)["pickscore"]
    got_clip = clip.score(images, PROMPTS)
    assert pick.transform.crop_rounding == "floor" and clip.transform.crop_rounding == "torchvision"
    np.testing.assert_allclose(got_pick, _reference_cosine(clip_dir, images, PROMPTS, pick.transform), atol=1e-5)
    np.testing.assert_allclose(got_clip, _reference_cosine(clip_dir, images, PROMPTS, clip.transform), atol=1e-5)
    assert np.all(np.abs(got_clip) <= 1.0)
    # one model load for both scorers (same folder)
    assert sum(1 for k in ctx.cache if k[0] == "hf_clip") == 1
    # batching does not change a score
    np.testing.assert_allclose(clip.score(images[2:3], PROMPTS[2:3]), got_clip[2:3], atol=1e-5)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        clip.score(images, PROMPTS[:3])


def test_aesthetic_reads_normalised_features_and_shares_the_forward(clip_dir, tmp_path):
    head_path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    head_sd = tiny.write_reward_mlp(head_path, input_size=8)
    ctx = ScorerContext()
    clip = build_scorer("clip", {"model": str(clip_dir)}, ctx)
    aes = build_scorer("aesthetic", {"clip_model": str(clip_dir), "head": str(head_path)}, ctx)
    model = clip.encoder.model
    calls = {"n": 0}
    original = model.get_image_features

    def counting(*a, **k):
        calls["n"] += 1
        return original(*a, **k)

    model.get_image_features = counting
    images = _images()
    clip.score(images, PROMPTS)
    got = aes.score(images, PROMPTS)
    assert calls["n"] == 1, "the aesthetic head must reuse the CLIP score's image forward"

    with torch.no_grad():
        feats = F.normalize(original(pixel_values=clip.transform(images)).pooler_output, dim=-1)
        x = feats
        for i in (0, 2, 4, 6, 7):
            x = x @ head_sd[f"layers.{i}.weight"].T + head_sd[f"layers.{i}.bias"]
    np.testing.assert_allclose(got, x.squeeze(-1).numpy(), rtol=1e-5, atol=1e-6)
    aes.score(list(images), PROMPTS)  # new list, same image objects: still memoised
    assert calls["n"] == 1
    aes.score(_images(), PROMPTS)  # other image objects: a new forward
    assert calls["n"] == 2


def test_hpsv2_converts_open_clip_checkpoint_and_letterboxes(tmp_path):
    vocab, eos = tiny.write_clip_tokenizer(tmp_path / "tok")
    sd = tiny.open_clip_state_dict(vocab, seed=3)
    torch.save({"state_dict": sd}, tmp_path / "HPS_v2_compressed.pt")
    ctx = ScorerContext()
    hps = build_scorer("hpsv2", {"checkpoint": str(tmp_path / "HPS_v2_compressed.pt"), "tokenizer": str(tmp_path / "tok"),
                                 "vision_heads": 2, "text_heads": 2}, ctx)
    assert hps.transform == ImageTransform(size=32, mode="letterbox")
    images = _images(3, size=(64, 32))  # not square: letterbox pads, a crop would cut
    prompts = PROMPTS[:3]
    got = hps.score(images, prompts)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids = torch.tensor([tok(p)["input_ids"] + [0] * (16 - len(tok(p)["input_ids"])) for p in prompts])
    assert (ids.argmax(-1) == torch.tensor([row.index(eos) for row in ids.tolist()])).all()
    img = tiny.open_clip_encode_image(sd, ImageTransform(32, "letterbox")(images), heads=2, layers=2)
    txt = tiny.open_clip_encode_text(sd, ids, heads=2, layers=2)
    ref = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_ict_and_hp_load_their_weights_over_the_base(clip_dir, tmp_path):
    from transformers import CLIPModel

    base = CLIPModel.from_pretrained(str(clip_dir))
    torch.manual_seed(5)
    ict_sd = {"visual_projection.weight": torch.randn_like(base.visual_projection.weight),
              "text_projection.weight": torch.randn_like(base.text_projection.weight)}
    torch.save(ict_sd, tmp_path / "ict.bin")
    backbone_sd = {k: v + 0.05 * torch.randn_like(v) for k, v in base.state_dict().items()
                   if k.startswith("vision_model.encoder.layers.1.")}
    torch.save(backbone_sd, tmp_path / "hp_backbone.bin")
    head_sd = tiny.write_reward_mlp(tmp_path / "mlp.bin", input_size=8, seed=2)

    ctx = ScorerContext()
    ict = build_scorer("ict", {"base": str(clip_dir), "weights": str(tmp_path / "ict.bin")}, ctx)
    hp = build_scorer("hp", {"base": str(clip_dir), "backbone": str(tmp_path / "hp_backbone.bin"),
                             "head": str(tmp_path / "mlp.bin")}, ctx)
    assert ict.info["load"]["matched"] == 2 and hp.info["load"]["matched"] == len(backbone_sd)
    images = _images()
    got_ict = ict.score(images, PROMPTS)
    got_hp = hp.score(images, PROMPTS)

    ict_model = CLIPModel.from_pretrained(str(clip_dir))
    ict_model.load_state_dict(ict_sd, strict=False)
    np.testing.assert_allclose(got_ict, _cosine_with(ict_model, clip_dir, images, PROMPTS, ict.transform), atol=1e-5)
    base_cos = _cosine_with(base, clip_dir, images, PROMPTS, ict.transform)
    assert not np.allclose(got_ict, base_cos, atol=1e-3), "ICT weights were not applied"

    hp_model = CLIPModel.from_pretrained(str(clip_dir))
    hp_model.load_state_dict(backbone_sd, strict=False)
    head = RewardMLP.from_state_dict(head_sd)
    with torch.no_grad():
        raw = hp_model.get_image_features(pixel_values=hp.transform(images)).pooler_output  # not normalised
        ref = torch.sigmoid(head(raw).squeeze(-1)).numpy()
    np.testing.assert_allclose(got_hp, ref, atol=1e-6)
    assert np.all((got_hp > 0) & (got_hp < 1))

    torch.save({"unrelated.weight": torch.zeros(2)}, tmp_path / "wrong.bin")
    with pytest.raises(ValueError, match="share no parameter name"):
        build_scorer("ict", {"base": str(clip_dir), "weights": str(tmp_path / "wrong.bin")}, ScorerContext())


def _cosine_with(model, tok_dir, images, prompts, transform):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    t = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=transform(images)).pooler_output
        txt = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).pooler_output
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).numpy()


@pytest.fixture(scope="module")
def blip_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("blip")
    vocab = tiny.write_bert_tokenizer(d / "bert")
    tiny.write_med_config(d / "med_config.json", vocab)
    torch.save({"model": tiny.blip_state_dict(vocab, seed=1)}, d / "model_large.pth")
    ir = tiny.blip_state_dict(vocab, seed=2, prefix="blip.")
    ir.update(tiny.write_reward_mlp(None, input_size=16, seed=3, prefix="mlp."))
    torch.save(ir, d / "ImageReward.pt")
    return d, vocab


def test_blip_score_is_the_contrastive_cosine(blip_files):
    d, _ = blip_files
    blip = build_scorer("blip", {"checkpoint": str(d / "model_large.pth"), "med_config": str(d / "med_config.json"),
                                 "tokenizer": str(d / "bert")}, ScorerContext())
    images = _images()
    got = blip.score(images, PROMPTS)

    from transformers import BertTokenizer

    sd = torch.load(d / "model_large.pth")["model"]
    tok = BertTokenizer.from_pretrained(str(d / "bert"))(PROMPTS, padding="max_length", truncation=True,
                                                            max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (4, 35)
    text = tiny.bert_text_reference(sd, tok["input_ids"], tok["attention_mask"])[:, 0]
    img = tiny.blip_vit_reference(sd, ImageTransform(32)(images))[:, 0]
    t = F.normalize(F.linear(text, sd["text_proj.weight"], sd["text_proj.bias"]), dim=-1)
    i = F.normalize(F.linear(img, sd["vision_proj.weight"], sd["vision_proj.bias"]), dim=-1)
    np.testing.assert_allclose(got, (t * i).sum(-1).numpy(), atol=1e-5)


def test_imagereward_standardises_the_mlp_output_of_the_cross_attended_cls(blip_files):
    d, _ = blip_files
    ir = build_scorer("imagereward", {"checkpoint": str(d / "ImageReward.pt"), "med_config": str(d / "med_config.json"),
                                      "tokenizer": str(d / "bert")}, ScorerContext())
    images = _images()
    got = ir.score(images, PROMPTS)
    # recompute: ViT tokens -> BERT with cross-attention -> CLS -> MLP -> (r - mean) / std
    ids, mask = ir._text(PROMPTS)
    with torch.no_grad():
        embeds = ir.parts.vision(pixel_values=ir.transform(images)).last_hidden_state
        sd = torch.load(d / "ImageReward.pt")
        torch.testing.assert_close(embeds, tiny.blip_vit_reference(sd, ir.transform(images), prefix="blip."), rtol=1e-4, atol=1e-5)
        cls = ir.parts.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds,
                            encoder_attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
        text_only = ir.parts.text(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        raw = ir.head(cls).squeeze(-1)
    assert not torch.allclose(cls, text_only), "ImageReward must cross-attend to the image"
    np.testing.assert_allclose(got, ((raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).numpy(), rtol=1e-6, atol=1e-6)
    # same prompt, different image -> different reward (items 0 and 3 share the prompt)
    assert abs(got[0] - got[3]) > 1e-6


def test_registry_errors_and_import_path_factories():
    with pytest.raises(ValueError, match="unknown scorer 'pickscor'"):
        build_scorer("pickscor", {}, ScorerContext())
    with pytest.raises(ValueError, match="unknown field"):
        build_scorer("clip", {"modle": "x"}, ScorerContext())
    s = build_scorer("eval_fakes:make_constant", {"value": 2.5}, ScorerContext())
    cols = score_columns(s, _images(2), PROMPTS[:2])
    assert list(cols) == ["const_a", "const_b"]
    assert cols["const_a"].tolist() == [2.5, 2.5] and cols["const_b"].tolist() == [0.0, 1.0]

    class WrongShape:
        name, columns = "bad", ("a", "b")

        def score(self, images, prompts):
            return np.zeros((2, 2))

    with pytest.raises(ValueError, match=r"returned shape \(2, 2\), expected \(3,\) or \(3, 2\)"):
        score_columns(WrongShape(), _images(3), ["a"] * 3)
