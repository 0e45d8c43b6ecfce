"""Model adapters: the frozen parts of a text-to-image model behind one small interface.

An adapter owns the U-Net (which the trainer trains, whole or through LoRA), the frozen text
encoder(s), the frozen VAE (none for a pixel-space model) and the noise scheduler, and knows how to

* ``encode_text(prompts)`` -> conditioning dict (``encoder_hidden_states``; SDXL adds the pooled
  ``text_embeds``), exactly as the diffusers pipelines of that model encode prompts;
* ``null_text(n)`` -> the unconditional conditioning the pipeline uses for classifier-free guidance
  (SD1.5: the empty prompt; SDXL: zeros, ``force_zeros_for_empty_prompt``);
* ``latent_dist(pixels)`` -> (mean, std) of the latent distribution (VAE) or (pixels, 0) in pixel space;
* ``unet_kwargs(cond, micro)`` -> the U-Net's keyword arguments (SDXL: ``added_cond_kwargs`` with
  ``time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` of each image);
* ``decode(latents)`` -> pixels in [-1, 1] (differentiable; ReFL);
* ``save_lora(dir, state_dict)`` -> ``pytorch_lora_weights.safetensors`` that
  ``pipeline.load_lora_weights(dir)`` (or ``unet.load_lora_adapter(dir, prefix="unet")``) reads.

Heavy imports happen inside functions so importing this module is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from instructengine.train.config import ModelConfig

__all__ = [
    "ModelAdapter",
    "SD15Adapter",
    "SDXLAdapter",
    "cat_cond",
    "noise_scheduler",
    "tokenize_padded",
    "index_cond",
    "load_adapter",
    "load_sd15",
    "load_sdxl",
    "load_trained_unet",
]

Cond = dict[str, torch.Tensor]


def cat_cond(conds: list[Cond]) -> Cond:
    """Concatenate conditioning dicts along the batch dimension."""
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def index_cond(cond: Cond, idx: torch.Tensor | slice) -> Cond:
    return {k: v[idx] for k, v in cond.items()}


def tokenize_padded(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


class ModelAdapter:
    """Common part of the adapters. Subclasses set ``kind`` and implement text encoding."""

    kind = "base"
    #: diffusers pipeline class whose ``save_lora_weights`` writes this model's LoRA files
    lora_pipeline = "StableDiffusionPipeline"

    def __init__(self, unet: Any, noise_scheduler: Any, vae: Any = None):
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.vae = vae
        self.device = torch.device("cpu")
        self.weight_dtype = torch.float32

    # --- placement -------------------------------------------------------------------------
    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.vae,) if m is not None]

    def to(self, device: torch.device | str, weight_dtype: torch.dtype, vae_dtype: torch.dtype) -> "ModelAdapter":
        """Move the frozen parts to ``device`` (text encoders in ``weight_dtype``, VAE in ``vae_dtype``)."""
        self.device = torch.device(device)
        self.weight_dtype = weight_dtype
        for m in self.frozen_modules():
            m.requires_grad_(False)
            m.eval()
            m.to(self.device, dtype=vae_dtype if m is self.vae else weight_dtype)
        return self

    # --- conditioning ----------------------------------------------------------------------
    def encode_text(self, prompts: list[str]) -> Cond:  # pragma: no cover - abstract
        raise NotImplementedError

    def null_text(self, n: int) -> Cond:
        one = self.encode_text([""])
        return {k: v.expand(n, *v.shape[1:]).clone() for k, v in one.items()}

    def unet_kwargs(self, cond: Cond, micro: torch.Tensor | None) -> dict[str, Any]:
        return {"encoder_hidden_states": cond["encoder_hidden_states"]}

    # --- image space -----------------------------------------------------------------------
    @property
    def unet_config(self) -> Any:
        return self.unet.config

    def latent_size(self, resolution: int) -> int:
        """Side of the U-Net input for square images of ``resolution`` pixels."""
        if self.vae is None:
            return resolution
        return resolution // 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0)) if self.vae is not None else 1.0

    @property
    def shift_factor(self) -> float:
        shift = getattr(self.vae.config, "shift_factor", None) if self.vae is not None else None
        return float(shift) if shift is not None else 0.0

    @torch.no_grad()
    def latent_dist(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the VAE posterior for pixels in [-1, 1], float32 on CPU-independent device."""
        dist = self.vae.encode(pixels.to(self.device, dtype=self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def latents_from_dist(self, mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample latents ``(mean + std * eps - shift) * scale`` (eps drawn by the caller's generator)."""
        return (mean + std * eps - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (scaled) -> pixels in [-1, 1]; differentiable with respect to ``latents``."""
        z = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    # --- saving ----------------------------------------------------------------------------
    def save_lora(self, out_dir: Path, unet_lora_state: dict[str, torch.Tensor]) -> Path:
        import diffusers

        pipeline_cls = getattr(diffusers, self.lora_pipeline)
        pipeline_cls.save_lora_weights(str(out_dir), unet_lora_layers=unet_lora_state, safe_serialization=True)
        return Path(out_dir) / "pytorch_lora_weights.safetensors"


class SD15Adapter(ModelAdapter):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder (last hidden state), VAE latents."""

    kind = "sd15"

    def __init__(self, unet: Any, noise_scheduler: Any, vae: Any, text_encoder: Any, tokenizer: Any):
        super().__init__(unet, noise_scheduler, vae)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.text_encoder, *super().frozen_modules()]

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Cond:
        ids = tokenize_padded(self.tokenizer, prompts).to(self.device)
        return {"encoder_hidden_states": self.text_encoder(ids)[0]}


class SDXLAdapter(ModelAdapter):
    """SDXL: two text encoders (penultimate hidden states, concatenated), pooled embedding of the
    second, and per-image size/crop micro-conditioning."""

    kind = "sdxl"
    lora_pipeline = "StableDiffusionXLPipeline"

    def __init__(self, unet: Any, noise_scheduler: Any, vae: Any, text_encoder: Any, text_encoder_2: Any,
                 tokenizer: Any, tokenizer_2: Any, force_zeros_for_empty_prompt: bool = True):
        super().__init__(unet, noise_scheduler, vae)
        self.text_encoders = [text_encoder, text_encoder_2]
        self.tokenizers = [tokenizer, tokenizer_2]
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [*self.text_encoders, *super().frozen_modules()]

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Cond:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(tokenize_padded(tokenizer, prompts).to(self.device), output_hidden_states=True)
            pooled = out[0]  # as the pipeline: the last encoder's projected pooled output is kept
            hidden.append(out.hidden_states[-2])
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    def null_text(self, n: int) -> Cond:
        if not self.force_zeros_for_empty_prompt:
            return super().null_text(n)
        one = self.encode_text([""])
        return {k: torch.zeros(n, *v.shape[1:], dtype=v.dtype, device=v.device) for k, v in one.items()}

    def unet_kwargs(self, cond: Cond, micro: torch.Tensor | None) -> dict[str, Any]:
        if micro is None:
            raise ValueError("SDXL needs per-image micro-conditioning (orig size, crop, target size)")
        return {
            "encoder_hidden_states": cond["encoder_hidden_states"],
            "added_cond_kwargs": {
                "text_embeds": cond["text_embeds"],
                "time_ids": micro.to(cond["text_embeds"].device, dtype=cond["text_embeds"].dtype),
            },
        }


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def _kw(cfg: "ModelConfig") -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if cfg.revision:
        kw["revision"] = cfg.revision
    if cfg.variant:
        kw["variant"] = cfg.variant
    return kw


def noise_scheduler(cfg: "ModelConfig") -> Any:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(cfg.source(), subfolder="scheduler", **({"revision": cfg.revision} if cfg.revision else {}))
    if cfg.prediction_type != "auto":
        sched.register_to_config(prediction_type=cfg.prediction_type)
    if sched.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"scheduler prediction_type {sched.config.prediction_type!r} is not supported; "
            "set model.prediction_type to 'epsilon' or 'v_prediction'"
        )
    return sched


def _vae(cfg: "ModelConfig") -> Any:
    from diffusers import AutoencoderKL

    if cfg.vae_path:
        sub = "vae" if (Path(cfg.vae_path) / "vae").is_dir() else None
        return AutoencoderKL.from_pretrained(cfg.vae_path, subfolder=sub)
    return AutoencoderKL.from_pretrained(cfg.source(), subfolder="vae", **_kw(cfg))


def _force_zeros(path: str) -> bool:
    index = Path(path) / "model_index.json"
    if index.is_file():
        return bool(json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True))
    return True


SD15_DEFAULT = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_DEFAULT = "stabilityai/stable-diffusion-xl-base-1.0"


def load_sd15(cfg: "ModelConfig") -> SD15Adapter:
    """``model.kind: sd15``: Stable Diffusion 1.x/2.x from a diffusers folder or Hub id."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    kw = _kw(cfg)
    path = cfg.source()
    return SD15Adapter(
        UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw), noise_scheduler(cfg), _vae(cfg),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw),
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
    )


load_sd15.default_path = SD15_DEFAULT  # type: ignore[attr-defined]


def load_sdxl(cfg: "ModelConfig") -> SDXLAdapter:
    """``model.kind: sdxl``: SDXL from a diffusers folder or Hub id."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    kw = _kw(cfg)
    path = cfg.source()
    return SDXLAdapter(
        UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw), noise_scheduler(cfg), _vae(cfg),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw),
        CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw),
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer"),
        AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2"),
        force_zeros_for_empty_prompt=_force_zeros(path),
    )


load_sdxl.default_path = SDXL_DEFAULT  # type: ignore[attr-defined]


def load_adapter(cfg: "ModelConfig") -> ModelAdapter:
    """Load the model named by ``cfg`` (a diffusers-format folder or hub id) into the adapter of its
    kind (:mod:`instructengine.registry`, kind ``model``: sd15, sdxl, a bundle's, or 'module:factory').

    Raises:
        ValueError: unknown kind or unsupported prediction type (the message says what is allowed).
    """
    from instructengine import registry
    from instructengine.errors import loading

    with loading("model.path", cfg.source() if cfg.kind in ("sd15", "sdxl") else cfg.path):
        adapter = registry.instantiate("model", cfg.kind, cfg, where="model.kind")
    if not isinstance(adapter, ModelAdapter):
        raise ValueError(f"model.kind {cfg.kind!r} built {type(adapter).__name__}, not a ModelAdapter")
    return adapter


def load_trained_unet(base_unet_dir: str | Path, path: str | Path) -> Any:
    """A trained U-Net (folder or LoRA weights fused into the base U-Net of ``base_unet_dir``); see
    :func:`instructengine.generation.unet.load_trained_unet`, the one loader."""
    from instructengine.generation.unet import load_trained_unet as load

    return load(base_unet_dir, path)
