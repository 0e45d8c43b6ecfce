"""The ShapesWorld text-to-image model: a pixel-space diffusers pipeline with a tiny text encoder.

Components (diffusers folder layout, ``from_pretrained`` / ``save_pretrained`` work):
``unet`` (``UNet2DConditionModel``, 3 channels, 32x32, images in [-1, 1], no VAE),
``text_encoder`` (transformers ``CLIPTextModel``), ``tokenizer`` (word-level
``PreTrainedTokenizerFast``), ``scheduler`` (``DDPMScheduler``, cosine schedule, epsilon target).
Sampling uses DPM-Solver++ with dynamic thresholding (without it, pixel-space DPM-Solver++ on the
cosine schedule returns noise) or DDIM with clipping, with classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from pydantic import Field

from instructengine.config import Config

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "shapes-t2i"


class ShapesModelConfig(Config):
    """Architecture of the tiny text-to-image model (data, as in open_clip's model JSONs)."""

    block_out_channels: tuple[int, ...] = Field((32, 64, 64), description="U-Net channels per resolution level")
    layers_per_block: int = Field(2, ge=1, description="ResNet layers per U-Net block")
    attention_levels: tuple[bool, ...] = Field(
        (False, False, True), description="per level, whether it has cross-attention (level 0 is 32x32)"
    )
    attention_head_dim: int = Field(8, ge=1, description="channels per attention head")
    text_hidden_size: int = Field(64, ge=8, description="text encoder width = U-Net cross_attention_dim")
    text_layers: int = Field(2, ge=1, description="text encoder transformer layers")
    text_heads: int = Field(4, ge=1, description="text encoder attention heads")
    image_size: int = Field(32, description="image side in pixels")


def build_components(cfg: ShapesModelConfig) -> dict:
    """Fresh (randomly initialised) unet, text encoder, tokenizer and training scheduler."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from instructengine.shapes.tokenizer import MAX_LENGTH, build_tokenizer

    if len(cfg.attention_levels) != len(cfg.block_out_channels):
        raise ValueError("attention_levels needs one entry per block_out_channels level")
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_hidden_size * 2, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=cfg.text_hidden_size,
    ))
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=cfg.text_hidden_size, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="epsilon", clip_sample=True)
    return {"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def sampling_scheduler(config, sampler: str):
    """The inference scheduler, built from the training scheduler's config. Spacing is set
    explicitly: a config loaded from disk and a fresh one must give the same timesteps."""
    common = dict(timestep_spacing="trailing", steps_offset=0)
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", thresholding=True, sample_max_value=1.0, **common)
    if sampler == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=True, **common)
    raise ValueError(f"sampler must be 'dpmpp' or 'ddim', got {sampler!r}")


def seeded_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise, one generator per image, so an image depends only on its own seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image for ShapesWorld. ``pipe(prompts, seeds) -> uint8 array (B, 32, 32, 3)``."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return enc.input_ids

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], guidance_scale: float = 3.0,
                 num_inference_steps: int = 20, sampler: str = "dpmpp", batch_size: int = 256,
                 text_noise_sigma: float = 0.0, progress: bool = False) -> np.ndarray:
        """Sample one image per (prompt, seed); ``text_noise_sigma`` adds Gaussian noise to the text
        condition (AGFSync-style candidate diversity), drawn from the image's seed."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        out = []
        chunks = range(0, len(prompts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="sampling", unit="batch")
        for i in chunks:
            out.append(self._sample(list(prompts[i:i + batch_size]), list(seeds[i:i + batch_size]),
                                    guidance_scale, num_inference_steps, sampler, text_noise_sigma))
        return np.concatenate(out) if out else np.zeros((0, 32, 32, 3), np.uint8)

    def _sample(self, prompts, seeds, guidance_scale, steps, sampler, text_noise_sigma) -> np.ndarray:
        device, dtype = self.unet.device, self.unet.dtype
        was_training = self.unet.training, self.text_encoder.training
        self.unet.eval()
        self.text_encoder.eval()
        try:
            return self._denoise(prompts, seeds, guidance_scale, steps, sampler, text_noise_sigma, device, dtype)
        finally:
            self.unet.train(was_training[0])
            self.text_encoder.train(was_training[1])

    def _denoise(self, prompts, seeds, guidance_scale, steps, sampler, text_noise_sigma, device, dtype):
        cond = self.encode_prompt(prompts)
        if text_noise_sigma > 0:
            noise = seeded_noise([s + 7_919 for s in seeds], tuple(cond.shape[1:])).to(cond)
            cond = cond + text_noise_sigma * noise
        uncond = self.encode_prompt([""]).expand_as(cond)
        sched = sampling_scheduler(self.scheduler.config, sampler)
        sched.set_timesteps(steps, device=device)
        size = self.unet.config.sample_size
        x = seeded_noise(seeds, (3, size, size)).to(device=device, dtype=dtype) * sched.init_noise_sigma
        emb = torch.cat([uncond, cond]).to(dtype)
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            eps_u, eps_c = self.unet(inp, t, encoder_hidden_states=emb).sample.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            x = sched.step(eps, t, x).prev_sample
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.permute(0, 2, 3, 1).cpu().numpy()


def load_pipeline(path: str | Path | None = None, device: str = "cpu") -> ShapesPipeline:
    """Load the shipped model (default) or one saved with ``save_pretrained``."""
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no ShapesWorld pipeline at {str(path)!r} (model_index.json missing); "
            "train one with `instructengine shapes pretrain` or use the shipped default"
        )
    pipe = ShapesPipeline.from_pretrained(path)
    return pipe.to(device)
