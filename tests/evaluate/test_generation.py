"""The one diffusers generator on a tiny Stable Diffusion pipeline saved to disk: seeds, LoRA, fine-tuned U-Net
(full folder or LoRA weights through the one loader), as the evaluation harness uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny
from instructengine.config import validate_config
from instructengine.evaluate.config import EvalConfig, ModelSpec
from instructengine.generation import build_generator
from instructengine.generation.diffusers_pipeline import DiffusersGenerator
from instructengine.evaluate.runner import evaluate


def _tiny_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2,
    )


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny StableDiffusionPipeline in diffusers folder layout (what a Hub id resolves to)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    vocab, eos = tiny.write_clip_tokenizer(root / "tok")
    tok = CLIPTokenizer.from_pretrained(str(root / "tok"), model_max_length=16)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=eos - 1,
                                        eos_token_id=eos, pad_token_id=0))
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    pipe = StableDiffusionPipeline(unet=_tiny_unet(0), vae=vae, text_encoder=text, tokenizer=tok,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(root / "pipe"))

    ft = _tiny_unet(1)  # a "fine-tuned" U-Net: other weights, same architecture
    ft.save_pretrained(str(root / "ft_unet"))
    ft.save_pretrained(str(root / "ft_pipe" / "unet"))

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    lora_unet = _tiny_unet(0)
    torch.manual_seed(3)
    lora_unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(str(root / "lora"), unet_lora_layers=get_peft_model_state_dict(lora_unet))
    return root


def _spec(sd_dir, **kw) -> ModelSpec:
    return ModelSpec(name=kw.pop("name", "m"), model=str(sd_dir / "pipe"), num_inference_steps=2, height=16, width=16, **kw)


def _arr(images):
    images = getattr(images, "images", images)
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_same_seed_same_image_and_batch_independence(sd_dir):
    gen = build_generator(_spec(sd_dir), "cpu")
    assert isinstance(gen, DiffusersGenerator)
    out = gen.generate(["a red car", "a blue dog"], [0, 1])
    assert out.flagged is None
    a = _arr(out)
    b = _arr(gen.generate(["a red car"], [0]).images + gen.generate(["a blue dog"], [1]).images)
    assert a.shape == (2, 16, 16, 3)
    assert np.abs(a - b).max() <= 1  # batching may move a value by one rounding step, no more
    c = _arr(gen.generate(["a red car"], [5]))
    assert np.abs(a[0] - c[0]).mean() > 1  # another seed, another image
    d = gen.describe()
    assert d["pipeline_class"] == "StableDiffusionPipeline" and d["scheduler_class"] == "DDIMScheduler"


def test_lora_and_finetuned_unet_change_the_images(sd_dir):
    prompts, seeds = ["a red car", "two cats"], [0, 0]
    base = _arr(build_generator(_spec(sd_dir), "cpu").generate(prompts, seeds))
    lora = _arr(build_generator(_spec(sd_dir, lora=str(sd_dir / "lora")), "cpu").generate(prompts, seeds))
    half = _arr(build_generator(_spec(sd_dir, lora=str(sd_dir / "lora"), lora_scale=0.0), "cpu").generate(prompts, seeds))
    ft = _arr(build_generator(_spec(sd_dir, unet=str(sd_dir / "ft_unet")), "cpu").generate(prompts, seeds))
    ft2 = _arr(build_generator(_spec(sd_dir, unet=str(sd_dir / "ft_pipe")), "cpu").generate(prompts, seeds))
    assert np.abs(base - lora).mean() > 0.5
    assert np.abs(base - half).max() <= 1  # LoRA at strength 0 is the base model
    assert np.abs(base - ft).mean() > 0.5
    assert np.array_equal(ft, ft2)  # a unet folder or a pipeline folder holding one
    # LoRA weights given as the trained U-Net are fused into the base U-Net by the same loader
    fused = _arr(build_generator(_spec(sd_dir, unet=str(sd_dir / "lora")), "cpu").generate(prompts, seeds))
    assert np.abs(fused - lora).max() <= 1


def test_scheduler_swap_and_errors(sd_dir):
    gen = build_generator(_spec(sd_dir, scheduler="DPMSolverMultistepScheduler"), "cpu")
    assert gen.describe()["scheduler_class"] == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="no scheduler class 'NoSuchScheduler'"):
        build_generator(_spec(sd_dir, scheduler="NoSuchScheduler"), "cpu")
    with pytest.raises(ValueError, match="unknown generator 'no_such_kind'"):
        build_generator(ModelSpec(name="x", kind="no_such_kind"), "cpu")


def test_eval_folders_of_two_diffusers_models_pair_up(sd_dir, tmp_path):
    (tmp_path / "p.txt").write_text("a red car\n\ntwo blue dogs\n")
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"), "benchmark": {"name": "mini", "path": str(tmp_path / "p.txt")},
        "models": [_spec(sd_dir, name="base").model_dump(), _spec(sd_dir, name="ft", unet=str(sd_dir / "ft_unet")).model_dump()],
        "images_per_prompt": 2, "batch_size": 3, "scorers": ["eval_fakes:make_redness"],
    })
    out = evaluate(cfg, log=lambda s: None)
    gen = json.loads((out["ft"] / "generation.json").read_text())
    assert gen["model"]["unet"].endswith("ft_unet") and gen["generator"]["scheduler_class"] == "DDIMScheduler"
    assert gen["generator"]["scheduler_config"]["beta_schedule"] == "scaled_linear"
    assert sorted(p.name for p in (out["base"] / "images").iterdir()) == ["0_0.png", "0_1.png", "1_0.png", "1_1.png"]
