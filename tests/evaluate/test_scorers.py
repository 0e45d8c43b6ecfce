"""Each scorer, built by its factory from tiny weights on disk, through the code path the real weights take."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import official_reference as official
import tiny
from instructengine.scorers.heads import RewardMLP
from instructengine.scorers.preprocess import ImageTransform
from instructengine.scorers import ScorerContext, build_scorer, score_columns
from instructengine.scorers.blip_scorers import IMAGEREWARD_MEAN, IMAGEREWARD_STD

PROMPTS = ["a red car", "two blue dogs", "a green circle on the square", "a red car"]
#: prompts that CLIP's SimpleTokenizer cleans (HTML entities, double-escaped, mojibake, odd whitespace)
DIRTY = ["a plate &amp; a spoon", "two  dogs &amp;amp;\n the cat", "caf\u00c3\u00a9 on the square", "a red car"]


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


def _official_cosine(model, pixels, ids, attention_mask=None):
    """cos(normalised image emb, normalised text emb), text ids as the official tokenizer made them."""
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels).pooler_output
        txt = model.get_text_features(input_ids=ids, attention_mask=attention_mask).pooler_output
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).numpy()


def test_pickscore_and_clip_are_cosines_with_their_own_crop(clip_dir):
    ctx = ScorerContext()
    images = _images(size=(61, 29))  # odd crop margin: the two roundings differ
    pick = build_scorer("pickscore", {"model": str(clip_dir), "processor": str(clip_dir)}, ctx)
    clip = build_scorer("clip", {"model": str(clip_dir)}, ctx)
    got_pick = score_columns(pick, images, PROMPTS)["pickscore"]
    got_clip = clip.score(images, DIRTY)
    assert pick.transform.crop_rounding == "floor" and clip.transform.crop_rounding == "torchvision"
    np.testing.assert_allclose(got_pick, _reference_cosine(clip_dir, images, PROMPTS, pick.transform), atol=1e-5)
    # the official paths: PickScore = CLIPProcessor (pixels) + its tokenizer; CLIP = clip._transform + clip.tokenize
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    hf_pixels = torch.stack([official.hf_clip_image_processor(im, 32) for im in images])
    torch.testing.assert_close(pick.transform(images), hf_pixels, rtol=0, atol=1e-6)
    clip_pixels = torch.stack([official.clip_transform(im, 32) for im in images])
    torch.testing.assert_close(clip.transform(images), clip_pixels, rtol=0, atol=1e-6)
    ids = official.SimpleTokenizer(clip_dir).tokenize(DIRTY, context_length=16)
    np.testing.assert_allclose(got_clip, _official_cosine(model, clip_pixels, ids), atol=1e-5)
    assert np.all(np.abs(got_clip) <= 1.0)
    # one model load for both scorers (same folder)
    assert sum(1 for k in ctx.cache if k[0] == "hf_clip") == 1
    # batching does not change a score
    np.testing.assert_allclose(clip.score(images[2:3], DIRTY[2:3]), got_clip[2:3], atol=1e-5)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        clip.score(images, PROMPTS[:3])


def test_clip_prompt_cleaning_matches_simple_tokenizer_ids(clip_dir):
    from transformers import AutoTokenizer

    from instructengine.scorers.clip_text import clean_clip_prompt

    tok = AutoTokenizer.from_pretrained(str(clip_dir))
    ref = official.SimpleTokenizer(clip_dir)
    prompts = DIRTY + ["plate &amp; a spoon", "\u00e2\u20ac\u0153the cat\u00e2\u20ac\u009d &lt;on&gt; &#39;a&#39; plate",
                       "  A  RED\tcar  ", "the &amp;lt; dog", "cafe&#769; red", "a\u3000red\u00a0car", "x\x1cy"]
    for p in prompts:
        assert tok(clean_clip_prompt(p))["input_ids"][1:-1] == ref.encode(p), p
    # without cleaning the entity is tokenised as '&', 'amp', ';': two tokens more
    assert len(tok("plate &amp; a spoon")["input_ids"]) == len(ref.encode("plate &amp; a spoon")) + 2 + 2
    clip = build_scorer("clip", {"model": str(clip_dir)}, ScorerContext())
    pick = build_scorer("pickscore", {"model": str(clip_dir), "processor": str(clip_dir)}, ScorerContext())
    assert clip.clean_text and not pick.clean_text  # PickScore's official processor does not clean


def test_openai_clip_checkpoint_loads_for_clip_and_aesthetic(clip_dir, tmp_path):
    vocab, _ = tiny.write_clip_tokenizer(tmp_path / "tok")
    head_path = tmp_path / "aesthetic.pth"
    head_sd = tiny.write_reward_mlp(head_path, input_size=8)
    images = _images(3, size=(45, 67))
    pixels = torch.stack([official.clip_transform(im, 32) for im in images])
    ids = official.SimpleTokenizer(tmp_path / "tok").tokenize(DIRTY[:3], context_length=16)
    for jit in (True, False):
        path = tmp_path / f"ViT-L-14{'-jit' if jit else ''}.pt"
        ref_model = tiny.write_openai_clip_checkpoint(path, vocab, seed=4, jit=jit)
        with torch.no_grad():
            ref_img, ref_txt = ref_model(pixels, ids)  # OpenAI's encode_image / encode_text
        ref = (F.normalize(ref_img, dim=-1) * F.normalize(ref_txt, dim=-1)).sum(-1).numpy()
        ctx = ScorerContext()
        clip = build_scorer("clip", {"model": str(path), "tokenizer": str(tmp_path / "tok")}, ctx)
        assert clip.encoder.model.config.vision_config.hidden_act == "quick_gelu"
        np.testing.assert_allclose(clip.score(images, DIRTY[:3]), ref, atol=1e-5)
        aes = build_scorer("aesthetic", {"clip_model": str(path), "head": str(head_path)}, ctx)
        assert aes.encoder is clip.encoder  # one model for both
        x = F.normalize(ref_img, dim=-1)
        for i in (0, 2, 4, 6, 7):
            x = x @ head_sd[f"layers.{i}.weight"].T + head_sd[f"layers.{i}.bias"]
        np.testing.assert_allclose(aes.score(images, DIRTY[:3]), x.squeeze(-1).numpy(), rtol=1e-5, atol=1e-5)

    torch.save({"layers.0.weight": torch.zeros(2, 2)}, tmp_path / "not_clip.pt")
    with pytest.raises(ValueError, match=r"not_clip.pt.*not an OpenAI/open_clip ViT CLIP state dict.*pass a ViT checkpoint"):
        build_scorer("clip", {"model": str(tmp_path / "not_clip.pt"), "tokenizer": str(tmp_path / "tok")}, ScorerContext())


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
    images = _images(size=(61, 29))
    clip.score(images, PROMPTS)
    got = aes.score(images, PROMPTS)
    assert calls["n"] == 1, "the aesthetic head must reuse the CLIP score's image forward"

    pixels = torch.stack([official.clip_transform(im, 32) for im in images])  # clip.load's preprocess
    torch.testing.assert_close(aes.transform(images), pixels, rtol=0, atol=1e-6)
    with torch.no_grad():
        feats = F.normalize(original(pixel_values=pixels).pooler_output, dim=-1)
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
    assert hps.transform == ImageTransform(size=32, mode="letterbox", antialias=True)
    images = _images(3, size=(67, 31))  # not square, odd: letterbox pads unevenly, a crop would cut
    prompts = DIRTY[:3]
    got = hps.score(images, prompts)

    # the official path: preprocess_val (ToTensor, ResizeMaxSize on the tensor, Normalize), open_clip tokenize
    pixels = torch.stack([official.hpsv2_val_transform(im, 32) for im in images])
    torch.testing.assert_close(hps.transform(images), pixels, rtol=0, atol=1e-6)
    ids = official.SimpleTokenizer(tmp_path / "tok").tokenize(prompts, context_length=16)
    assert (ids.argmax(-1) == (ids == eos).int().argmax(-1)).all()
    img = tiny.open_clip_encode_image(sd, pixels, heads=2, layers=2)
    txt = tiny.open_clip_encode_text(sd, ids, heads=2, layers=2)
    ref = (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    old = build_scorer("hpsv2", {"checkpoint": str(tmp_path / "HPS_v2_compressed.pt"), "tokenizer": str(tmp_path / "tok"),
                                 "vision_heads": 2, "text_heads": 2, "antialias": False}, ctx)
    assert old.transform.antialias is False and not np.allclose(old.score(images, prompts), got, atol=1e-6)


@pytest.fixture(scope="module")
def icthp_files(clip_dir, tmp_path_factory):
    """ICT weights (both projections), an HP backbone (one vision block) and an HP head, over the tiny base."""
    from transformers import CLIPModel

    d = tmp_path_factory.mktemp("icthp")
    base = CLIPModel.from_pretrained(str(clip_dir))
    torch.manual_seed(5)
    ict_sd = {"visual_projection.weight": torch.randn_like(base.visual_projection.weight),
              "text_projection.weight": torch.randn_like(base.text_projection.weight)}
    torch.save(ict_sd, d / "ict.bin")
    backbone_sd = {k: v + 0.05 * torch.randn_like(v) for k, v in base.state_dict().items()
                   if k.startswith("vision_model.encoder.layers.1.")}
    torch.save(backbone_sd, d / "hp_backbone.bin")
    head_sd = tiny.write_reward_mlp(d / "mlp.bin", input_size=8, seed=2)
    options = {"base": str(clip_dir), "weights": str(d / "ict.bin"), "backbone": str(d / "hp_backbone.bin"),
               "head": str(d / "mlp.bin")}
    return options, ict_sd, backbone_sd, head_sd


def _official_ict_hp(clip_dir, icthp_files, images, prompts):
    """ICTHP eval.py's calculate_ict_hp_scores, per image, with its preprocessing and tokenizer."""
    from transformers import CLIPModel

    _, ict_sd, backbone_sd, head_sd = icthp_files
    ict_model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    ict_model.load_state_dict(ict_sd, strict=False)
    hp_backbone = CLIPModel.from_pretrained(str(clip_dir)).eval()
    hp_backbone.load_state_dict(backbone_sd, strict=False)
    tokenizer = official.SimpleTokenizer(clip_dir)
    ict, hp = [], []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            pixels = official.hf_clip_image_processor(image, 32)[None]  # CLIPProcessor(images=...)
            img = ict_model.get_image_features(pixel_values=pixels).pooler_output
            img = img / img.norm(dim=-1, keepdim=True)
            txt = ict_model.get_text_features(tokenizer.tokenize([prompt], context_length=16)).pooler_output  # no mask
            txt = txt / txt.norm(dim=-1, keepdim=True)
            ict.append((txt @ img.T).item())
            f = hp_backbone.get_image_features(pixel_values=pixels).pooler_output  # not normalised
            x = f
            for i in (0, 2, 4, 6, 7):
                x = x @ head_sd[f"layers.{i}.weight"].T + head_sd[f"layers.{i}.bias"]
            hp.append(torch.sigmoid(x).item())
    return np.array(ict), np.array(hp)


def test_ict_and_hp_load_their_weights_over_the_base(clip_dir, icthp_files):
    options, ict_sd, backbone_sd, _ = icthp_files
    ctx = ScorerContext()
    ict = build_scorer("ict", {k: options[k] for k in ("base", "weights")}, ctx)
    hp = build_scorer("hp", {k: options[k] for k in ("base", "backbone", "head")}, ctx)
    assert ict.info["load"]["matched"] == 2 and hp.info["load"]["matched"] == len(backbone_sd)
    images = _images(size=(61, 29))
    got_ict = ict.score(images, DIRTY)
    got_hp = hp.score(images, DIRTY)
    for t in (ict.transform, hp.transform):
        torch.testing.assert_close(t(images), torch.stack([official.hf_clip_image_processor(im, 32) for im in images]),
                                   rtol=0, atol=1e-6)

    ref_ict, ref_hp = _official_ict_hp(clip_dir, icthp_files, images, DIRTY)
    np.testing.assert_allclose(got_ict, ref_ict, atol=1e-5)
    np.testing.assert_allclose(got_hp, ref_hp, atol=1e-6)
    assert np.all((got_hp > 0) & (got_hp < 1))
    from transformers import CLIPModel

    base = CLIPModel.from_pretrained(str(clip_dir)).eval()
    ids = official.SimpleTokenizer(clip_dir).tokenize(DIRTY, context_length=16)
    base_cos = _official_cosine(base, ict.transform(images), ids)
    assert not np.allclose(got_ict, base_cos, atol=1e-3), "ICT weights were not applied"

    torch.save({"unrelated.weight": torch.zeros(2)}, icthp_files[0]["weights"].replace("ict.bin", "wrong.bin"))
    with pytest.raises(ValueError, match="share no parameter name"):
        build_scorer("ict", {"base": str(clip_dir), "weights": icthp_files[0]["weights"].replace("ict.bin", "wrong.bin")},
                     ScorerContext())


def test_ict_hp_is_the_per_image_product(clip_dir, icthp_files):
    from instructengine.scorers.clip_scorers import ProductScorer

    class Fixed:
        def __init__(self, name, values):
            self.name, self.values = name, np.array(values)

        def score(self, images, prompts):
            return self.values

    hand = ProductScorer("ict_hp", Fixed("ict", [0.25, -0.5, 0.0]), Fixed("hp", [0.5, 0.25, 0.9]), info={})
    np.testing.assert_allclose(hand.score([1, 2, 3], ["a", "b", "c"]), [0.125, -0.125, 0.0])

    options = icthp_files[0]
    ctx = ScorerContext()
    ict = build_scorer("ict", {k: options[k] for k in ("base", "weights")}, ctx)
    both = build_scorer("ict_hp", options, ctx)
    assert both.columns == ("ict_hp",) and both.first.encoder is ict.encoder  # the ICT model is loaded once
    images = _images(size=(61, 29))
    ref_ict, ref_hp = _official_ict_hp(clip_dir, icthp_files, images, DIRTY)
    got = score_columns(both, images, DIRTY)["ict_hp"]
    np.testing.assert_allclose(got, ref_ict * ref_hp, atol=1e-5)


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
    images = _images(size=(61, 29))
    got = blip.score(images, PROMPTS)
    pixels = torch.stack([official.clip_transform(im, 32) for im in images])  # BLIPScore.py's _transform(224)
    torch.testing.assert_close(blip.transform(images), pixels, rtol=0, atol=1e-6)

    from transformers import BertTokenizer

    sd = torch.load(d / "model_large.pth")["model"]
    tok = BertTokenizer.from_pretrained(str(d / "bert"))(PROMPTS, padding="max_length", truncation=True,
                                                            max_length=35, return_tensors="pt")
    assert tok["input_ids"].shape == (4, 35)
    text = tiny.bert_text_reference(sd, tok["input_ids"], tok["attention_mask"])[:, 0]
    img = tiny.blip_vit_reference(sd, pixels)[:, 0]
    t = F.normalize(F.linear(text, sd["text_proj.weight"], sd["text_proj.bias"]), dim=-1)
    i = F.normalize(F.linear(img, sd["vision_proj.weight"], sd["vision_proj.bias"]), dim=-1)
    np.testing.assert_allclose(got, (t * i).sum(-1).numpy(), atol=1e-5)


def test_imagereward_standardises_the_mlp_output_of_the_cross_attended_cls(blip_files):
    d, _ = blip_files
    ir = build_scorer("imagereward", {"checkpoint": str(d / "ImageReward.pt"), "med_config": str(d / "med_config.json"),
                                      "tokenizer": str(d / "bert")}, ScorerContext())
    images = _images(size=(61, 29))
    got = ir.score(images, PROMPTS)
    # recompute as ImageReward.score does: _transform(224) pixels, BERT ids padded to 35, ViT tokens ->
    # BERT with cross-attention -> CLS -> MLP -> (r - mean) / std
    from transformers import BertTokenizer

    pixels = torch.stack([official.clip_transform(im, 32) for im in images])
    torch.testing.assert_close(ir.transform(images), pixels, rtol=0, atol=1e-6)
    tok = BertTokenizer.from_pretrained(str(d / "bert"))(PROMPTS, padding="max_length", truncation=True,
                                                            max_length=35, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    with torch.no_grad():
        embeds = ir.parts.vision(pixel_values=pixels).last_hidden_state
        sd = torch.load(d / "ImageReward.pt")
        torch.testing.assert_close(embeds, tiny.blip_vit_reference(sd, pixels, prefix="blip."), rtol=1e-4, atol=1e-5)
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
