"""Evaluation images: a generator protocol, a diffusers generator, and the seeded, resumable writer.

Any object with ``generate(prompts: list[str], seeds: list[int]) -> list[PIL.Image]`` is a
generator (optionally ``describe() -> dict``, written into ``generation.json``). Image ``i`` must
depend only on ``(prompts[i], seeds[i])`` and the model, never on its batch neighbours, so that a
resumed run or another batch size gives the same images.

:class:`DiffusersGenerator` loads any diffusers pipeline by Hub id or local folder, optionally
with a fine-tuned U-Net (a diffusers ``unet`` folder, or a pipeline folder holding one) and/or a
LoRA (``load_lora_weights``), and draws each image's initial noise from a CPU
``torch.Generator`` seeded with that image's seed (so the noise is the same on any device).

Custom generators (ShapesWorld) are named by ``kind``: a registered name or an import path
``"package.module:factory"``, called as ``factory(options: dict, device: str)``.
"""

from __future__ import annotations

import importlib
import io
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from pydantic import Field, field_validator

from instructengine.config import Config

__all__ = [
    "DiffusersGenerator",
    "ImageGenerator",
    "ModelSpec",
    "build_generator",
    "register_generator",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@runtime_checkable
class ImageGenerator(Protocol):
    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]: ...


class ModelSpec(Config):
    """One model to evaluate: how to build its generator and the sampling settings."""

    name: str = Field(description="model name; the folder eval/<name>/ (letters, digits, '.', '_', '-')")
    kind: str = Field("diffusers", description="'diffusers', a registered generator name, or 'package.module:factory'")
    pretrained: str | None = Field(None, description="diffusers pipeline: Hub id or local folder (kind=diffusers)")
    unet: str | None = Field(None, description="fine-tuned U-Net: a diffusers unet folder or a pipeline folder with unet/")
    lora: str | None = Field(None, description="LoRA weights for pipe.load_lora_weights: folder, file or Hub id")
    lora_scale: float = Field(1.0, description="LoRA strength")
    scheduler: str | None = Field(None, description="diffusers scheduler class name to swap in (e.g. DPMSolverMultistepScheduler); default: the pipeline's")
    num_inference_steps: int = Field(50, ge=1, description="denoising steps")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale")
    height: int | None = Field(None, ge=8, description="image height (default: the pipeline's)")
    width: int | None = Field(None, ge=8, description="image width (default: the pipeline's)")
    negative_prompt: str | None = Field(None, description="negative prompt for every image")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="pipeline weights dtype")
    disable_safety_checker: bool = Field(False, description="load without the safety checker (it blacks out flagged images)")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options for a custom generator factory")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be a folder-safe name: letters, digits, '.', '_', '-' (e.g. sd15-base)")
        return v


GeneratorFactory = Callable[[dict[str, Any], str], ImageGenerator]
_REGISTRY: dict[str, GeneratorFactory | str] = {"shapes": "instructengine.shapes.harness:make_generator"}


def register_generator(name: str, factory: GeneratorFactory | str) -> None:
    """Make ``kind: <name>`` usable; ``factory(options, device)`` or an ``"module:attr"`` path."""
    _REGISTRY[name] = factory


def build_generator(spec: ModelSpec, device: str = "cpu") -> ImageGenerator:
    """Build the generator a model spec describes.

    Raises:
        ValueError: unknown kind, missing ``pretrained`` for diffusers, or a factory whose result
            has no ``generate`` method.
    """
    if spec.kind == "diffusers":
        return DiffusersGenerator(spec, device)
    factory = _REGISTRY.get(spec.kind, spec.kind)
    if isinstance(factory, str):
        mod, _, attr = factory.partition(":")
        if not mod or not attr:
            raise ValueError(
                f"model {spec.name!r}: kind {spec.kind!r} is neither 'diffusers', a registered generator "
                f"({sorted(_REGISTRY)}), nor an import path 'package.module:factory'"
            )
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"model {spec.name!r}: cannot import generator factory {spec.kind!r}: {err}") from err
    gen = factory(dict(spec.options), device)
    if not isinstance(gen, ImageGenerator):
        raise ValueError(f"model {spec.name!r}: factory {spec.kind!r} returned {type(gen).__name__}, which has no generate()")
    return gen


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class DiffusersGenerator:
    """A diffusers text-to-image pipeline with optional fine-tuned U-Net and LoRA.

    ``last_nsfw`` holds the safety checker's flags for the last batch (None when the pipeline has
    no checker); the harness records them, since a flagged image is replaced by a black one.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        from diffusers import DiffusionPipeline

        if not spec.pretrained:
            raise ValueError(f"model {spec.name!r}: kind 'diffusers' needs `pretrained` (a Hub id or a pipeline folder)")
        self.spec = spec
        self.device = device
        dtype = _torch_dtype(spec.dtype)
        kwargs: dict[str, Any] = {"torch_dtype": dtype}
        if spec.disable_safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        if spec.unet:
            kwargs["unet"] = _load_unet(spec.unet, dtype)
        with warnings.catch_warnings():
            # `torch_dtype` works on every diffusers this package supports (>= 0.31); 0.42 renamed it
            warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(spec.pretrained, **kwargs)
        if spec.scheduler:
            swap_scheduler(pipe, spec.scheduler, f"model {spec.name!r}")
        if spec.lora:
            pipe.load_lora_weights(spec.lora, adapter_name="eval_lora")
            pipe.set_adapters(["eval_lora"], adapter_weights=[spec.lora_scale])
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.last_nsfw: list[bool] | None = None

    def describe(self) -> dict[str, Any]:
        import diffusers

        return {
            "kind": "diffusers",
            "pipeline_class": type(self.pipe).__name__,
            "scheduler_class": type(self.pipe.scheduler).__name__,
            "scheduler_config": dict(self.pipe.scheduler.config),
            "diffusers_version": diffusers.__version__,
            "noise": "per image: torch.Generator('cpu').manual_seed(seed)",
        }

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        import torch

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        s = self.spec
        kwargs: dict[str, Any] = dict(
            prompt=list(prompts),
            num_inference_steps=s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds],
            output_type="pil",
        )
        if s.negative_prompt is not None:
            kwargs["negative_prompt"] = [s.negative_prompt] * len(prompts)
        if s.height:
            kwargs["height"] = s.height
        if s.width:
            kwargs["width"] = s.width
        with torch.no_grad():
            out = self.pipe(**kwargs)
        flags = getattr(out, "nsfw_content_detected", None)
        self.last_nsfw = [bool(f) for f in flags] if flags is not None else None
        return list(out.images)


def swap_scheduler(pipe: Any, name: str, where: str) -> None:
    """Replace ``pipe.scheduler`` by diffusers' class ``name`` built from the current scheduler's config.

    Raises:
        ValueError: diffusers has no scheduler class of that name (the message starts with ``where``).
    """
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{where}: diffusers has no scheduler class {name!r}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def _load_unet(path: str, dtype):
    from diffusers import UNet2DConditionModel

    p = Path(path)
    sub = {"subfolder": "unet"} if p.is_dir() and not (p / "config.json").exists() and (p / "unet" / "config.json").exists() else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        return UNet2DConditionModel.from_pretrained(str(p) if sub else path, torch_dtype=dtype, **sub)


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image (or an HxWx3 uint8 array) as PNG bytes."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.asarray(image, dtype="uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def seeds_for(images_per_prompt: int, seed: int, seeds: Sequence[int] | None) -> list[int]:
    """The seed list: explicit ``seeds``, else ``seed, seed+1, ..., seed+K-1`` (same for every prompt)."""
    if seeds is not None:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {list(seeds)} contain duplicates")
        return [int(x) for x in seeds]
    return [seed + k for k in range(images_per_prompt)]
