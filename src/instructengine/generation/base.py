"""The generator protocol, its config and its builder.

An :class:`ImageGenerator` draws one image per (prompt, seed) in ONE batched call::

    generate(prompts: list[str], seeds: list[int]) -> Generated

Image ``i`` must depend only on ``(prompts[i], seeds[i])`` and the model, not on its batch
neighbours (each image's initial noise comes from its own seeded generator) - up to CPU/GPU
rounding, which can differ with the batch size; the candidates stage therefore always makes an
image in the same call, so a resumed or re-sharded run reproduces it bit for bit.
``fingerprint`` names what determines the pixels; ``describe()`` (optional) is written beside
the images.

Which generator a config builds is its ``kind``: ``diffusers`` (any diffusers pipeline), a name a
bundle registered (:mod:`instructengine.registry`, kind ``generator``) or an import path
``"package.module:factory"``; the factory is called with the :class:`GeneratorConfig`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
from pydantic import Field, field_validator, model_validator

from instructengine.config import Config

__all__ = [
    "Dtype",
    "Generated",
    "GeneratorConfig",
    "ImageGenerator",
    "TEXT_NOISE_SEED_OFFSET",
    "build_generator",
    "check_call",
    "noise_seed",
    "png_bytes",
    "seeds_for",
    "text_noise",
]

#: offset between an image's noise seed and its text-noise seed (the two draws must differ)
TEXT_NOISE_SEED_OFFSET = 7_919
Dtype = Literal["float32", "float16", "bfloat16"]


@dataclass
class Generated:
    """The images of one call (uint8 arrays (H, W, 3), in call order) and, when the backend has
    a safety checker, whether each was flagged (a flagged image is blacked out by diffusers)."""

    images: list[np.ndarray]
    flagged: list[bool] | None = None


@runtime_checkable
class ImageGenerator(Protocol):
    fingerprint: str

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> Generated: ...


class GeneratorConfig(Config):
    """A text-to-image generator: which one (``kind``), its weights and its sampling settings."""

    kind: str = Field(
        "diffusers",
        description="'diffusers' (any diffusers text-to-image pipeline), a generator a bundle registered "
        "(e.g. ShapesWorld's shapes_model, shapes_render), or an import path 'package.module:factory' called with "
        "this config.",
    )
    model: str | None = Field(
        None, description="Weights: a Hub id or local pipeline folder (diffusers: required; bundle generators: their "
        "model folder, null = the bundle's default)."
    )
    unet: str | None = Field(
        None, description="A trained U-Net swapped into the pipeline: a diffusers unet folder, a pipeline folder with "
        "unet/, or LoRA weights (pytorch_lora_weights.safetensors or its folder), fused in."
    )
    lora: str | None = Field(None, description="diffusers: LoRA weights loaded with pipe.load_lora_weights (folder, file or Hub id).")
    lora_scale: float = Field(1.0, description="Strength of `lora`.")
    num_inference_steps: int = Field(30, ge=1, description="Denoising steps per image.")
    guidance_scale: float = Field(5.0, ge=0, description="Classifier-free guidance scale.")
    scheduler: str | None = Field(
        None, description="diffusers: scheduler class to swap in (e.g. DPMSolverMultistepScheduler); null: the pipeline's."
    )
    height: int | None = Field(None, ge=8, description="Image height (null: the model's default).")
    width: int | None = Field(None, ge=8, description="Image width (null: the model's default).")
    negative_prompt: str | None = Field(None, description="Negative prompt for every image.")
    text_noise_sigma: float = Field(
        0.0,
        ge=0,
        description="AGFSync-style Gaussian noise added to the text condition (prompt embeddings), drawn from the "
        "image's seed, for more diverse candidates; 0 disables it. Its scale is model specific.",
    )
    dtype: Dtype = Field(
        "float32", description="Weights dtype (diffusers); bundle generators may run under autocast instead."
    )
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda ('auto': the accelerate process's device).")
    disable_safety_checker: bool = Field(
        False, description="diffusers: load without the safety checker (it blacks out flagged images)."
    )
    local_files_only: bool = Field(False, description="Never reach the Hub when loading.")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per process (null: torch's default).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the generator kind (see the generator's docs), e.g. "
        "shapes_render: {error_rate: 0.5}."
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("generator", v)

    @model_validator(mode="after")
    def _check(self) -> "GeneratorConfig":
        if self.kind == "diffusers" and not self.model:
            raise ValueError("kind 'diffusers' needs `model` (a Hub id such as stabilityai/stable-diffusion-xl-base-1.0, "
                             "or a local pipeline folder)")
        return self

    def fingerprint(self) -> str:
        """What determines the pixels (not the device, threads or hub access): a short hash + the kind."""
        data = self.model_dump(mode="json", exclude={"device", "torch_threads", "local_files_only"})
        if type(self) is not GeneratorConfig:  # subclasses (e.g. an evaluation ModelSpec) add labels only
            data = {k: v for k, v in data.items() if k in GeneratorConfig.model_fields}
        blob = json.dumps(data, sort_keys=True)
        return f"{self.kind}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def settings_text(self) -> str:
        """The settings that determine the images, in words (dataset and model cards)."""
        if ":" in self.kind:  # a custom factory: its options are all we know
            return f"factory {self.kind} {json.dumps(self.options, sort_keys=True)}"
        text = f"{self.num_inference_steps} steps, guidance {self.guidance_scale}"
        if self.text_noise_sigma:
            text += f", text noise sigma {self.text_noise_sigma}"
        if self.unet:
            text += f", trained U-Net {self.unet}"
        if self.options:
            text += f", options {json.dumps(self.options, sort_keys=True)}"
        return text


def check_call(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    """Raise ValueError unless there is one seed per prompt."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per image")


def text_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> Any:
    """Per-image Gaussian noise for the text condition, drawn from each image's seed (CPU generator,
    so it is the same on every device)."""
    import torch

    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s) + TEXT_NOISE_SEED_OFFSET)) for s in seeds]
    )


def build_generator(cfg: GeneratorConfig, device: str | None = None, where: str = "generator") -> ImageGenerator:
    """The generator ``cfg`` names (models are loaded here); ``device`` overrides ``cfg.device``;
    ``where`` is the config section ``cfg`` came from (named in errors).

    Raises:
        ValueError: an unknown kind, or a factory that does not return an ImageGenerator.
        instructengine.errors.DeviceError: a CUDA device on a machine without one.
        instructengine.errors.ModelLoadError: the loader's OSError (missing folder, unknown or
            unreachable Hub id), naming ``<where>.model``.
    """
    from instructengine import registry
    from instructengine.errors import loading, require_device

    if device is not None and device != cfg.device:
        cfg = cfg.model_copy(update={"device": device})
    require_device(f"{where}.device" if device is None else "device", cfg.device)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    with loading(f"{where}.model", cfg.model):
        gen = registry.instantiate("generator", cfg.kind, cfg, where=f"{where}.kind")
    if not isinstance(gen, ImageGenerator):
        raise ValueError(
            f"generator kind {cfg.kind!r} built {type(gen).__name__}, which lacks `fingerprint` and "
            "`generate(prompts, seeds) -> Generated`"
        )
    return gen


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image (or an HxWx3 uint8 array) as PNG bytes (no metadata)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype="uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def noise_seed(noise: str, prompt_index: Any, seed: int) -> int:
    """The generator seed of image ``seed`` of prompt ``prompt_index``.

    ``shared``: ``seed`` itself, so image seed s starts every prompt from the same noise (the usual benchmark
    habit; one image seed is then one noise draw shared by all prompts). ``per_prompt``: the first 31 bits of
    sha256("<prompt_index>/<seed>"), so every (prompt, image seed) has its own noise and 750 prompts give 750
    independent noise draws.
    """
    if noise == "shared":
        return int(seed)
    if noise == "per_prompt":
        digest = hashlib.sha256(f"{prompt_index}/{int(seed)}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    raise ValueError(f"noise {noise!r} is not one of 'shared', 'per_prompt'")


def seeds_for(images_per_prompt: int, seed: int, seeds: Sequence[int] | None) -> list[int]:
    """The seed list: explicit ``seeds``, else ``seed, seed+1, ..., seed+K-1`` (same for every prompt)."""
    if seeds is not None:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {list(seeds)} contain duplicates")
        return [int(x) for x in seeds]
    return [seed + k for k in range(images_per_prompt)]
