"""The tiny text-to-image pipeline and contrastive model: build, train, save, load, sample; and the
shipped checkpoints."""

import json

import numpy as np
import pytest
import torch

from instructengine.shapes.contrastive import (
    DEFAULT_CLIP_DIR, ContrastiveConfig, ShapesClipScorer, perturb, train_contrastive,
)
from instructengine.shapes.pipeline import DEFAULT_MODEL_DIR, ShapesModelConfig, ShapesPipeline, build_components, load_pipeline
from instructengine.shapes.pretrain import PretrainConfig, pretrain
from instructengine.shapes.scene import SceneSampler, parse_caption

TINY = ShapesModelConfig(block_out_channels=(8, 16), attention_levels=(False, True), layers_per_block=1,
                         attention_head_dim=4, text_hidden_size=16, text_layers=1, text_heads=2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_pipeline_samples_per_seed_and_round_trips(tmp_path):
    torch.manual_seed(0)
    pipe = ShapesPipeline(**build_components(TINY))
    prompts = ["a small red circle", "two large blue squares , dull"]
    a = pipe(prompts, [1, 2], num_inference_steps=2)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    b = pipe(prompts[1:], [2], num_inference_steps=2)
    assert np.array_equal(a[1], b[0])  # an image depends only on its own prompt and seed
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    again = load_pipeline(tmp_path / "p")
    assert np.array_equal(again(prompts, [1, 2], num_inference_steps=2), a)
    ddim = again(prompts, [1, 2], num_inference_steps=2, sampler="ddim")
    assert ddim.shape == a.shape
    with pytest.raises(ValueError, match="sampler"):
        again(prompts, [1, 2], sampler="euler")
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        again(prompts, [1])


def test_missing_pipeline_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json missing"):
        load_pipeline(tmp_path)


def test_pretrain_resumes_to_the_same_weights(tmp_path):
    base = dict(batch_size=4, threads=1, checkpoint_every=2, log_every=1, warmup_steps=1, model=TINY)
    full = pretrain(PretrainConfig(out_dir=tmp_path / "full", steps=4, **base), progress=False)
    part = PretrainConfig(out_dir=tmp_path / "part", steps=2, **base)
    pretrain(part, progress=False)  # "killed" after step 2 (its checkpoint is what a kill leaves)
    resumed = pretrain(PretrainConfig(out_dir=tmp_path / "part", steps=4, **base), progress=False)
    p1, p2 = load_pipeline(full), load_pipeline(resumed)
    for (n, x), (_, y) in zip(p1.unet.state_dict().items(), p2.unet.state_dict().items()):
        assert torch.equal(x, y), n
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed_losses = [json.loads(line)["loss"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert losses == resumed_losses and len(losses) == 4
    assert (tmp_path / "full" / "config.yaml").is_file()


def test_roomier_base_option_has_attention_at_16x16_and_fits_the_size_limit():
    """configs/shapes_pretrain_attn16.yaml: cross-attention at 16x16 (level 1) too, <= 20 MB float32."""
    from pathlib import Path

    from instructengine.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    shipped = load_config(PretrainConfig, root / "shapes_pretrain.yaml")
    roomy = load_config(PretrainConfig, root / "shapes_pretrain_attn16.yaml")
    assert roomy.model.attention_levels == (False, True, True) and roomy.p_relation > shipped.p_relation
    comps = build_components(roomy.model)
    kinds = [type(b).__name__ for b in comps["unet"].down_blocks]
    assert kinds == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    n_bytes = 4 * sum(p.numel() for m in ("unet", "text_encoder") for p in comps[m].parameters())
    assert n_bytes <= 20 * 2**20
    assert n_bytes > 4 * sum(p.numel() for m in ("unet", "text_encoder")
                             for p in build_components(shipped.model)[m].parameters())


def test_contrastive_training_and_scorer(tmp_path):
    cfg = ContrastiveConfig(out_dir=tmp_path, steps=3, batch_size=8, hidden_size=16, layers=1, threads=1)
    path = train_contrastive(cfg, progress=False)
    scorer = ShapesClipScorer(path)
    imgs = np.zeros((3, 32, 32, 3), np.uint8)
    s = scorer.score(imgs, ["a small red circle", "a large blue square", "two small red circles"])
    assert s.shape == (3,) and np.all(np.abs(s) <= 1 + 1e-5)
    e = scorer.embed(["a small red circle"])
    assert e.shape == (1, 16) and np.isclose(np.linalg.norm(e), 1, atol=1e-5)
    with pytest.raises(ValueError, match="3 images but 1 prompts"):
        scorer.score(imgs, ["x"])


def test_perturb_changes_exactly_one_stated_thing():
    rng = np.random.default_rng(0)
    sampler = SceneSampler(split="any", rng=rng)
    for _ in range(300):
        s = sampler.draw()
        p = perturb(s, rng)
        assert p != s and parse_caption(p.caption) == p


def test_shipped_models_load_sample_and_score():
    assert (DEFAULT_MODEL_DIR / "model_index.json").is_file(), "the shipped ShapesWorld model is missing"
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    pipe = ShapesPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    imgs = pipe(["a large red circle", "two small blue squares"], [0, 1], num_inference_steps=10)
    assert imgs.shape == (2, 32, 32, 3) and imgs.std() > 5  # not blank
    scorer = ShapesClipScorer(DEFAULT_CLIP_DIR)
    assert scorer.score(imgs, ["a large red circle", "two small blue squares"]).shape == (2,)
