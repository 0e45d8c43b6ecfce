"""One generation stack for the candidates stage and the evaluation harness.

* :mod:`.base` - the :class:`ImageGenerator` protocol (``generate(prompts, seeds) -> Generated``),
  :class:`GeneratorConfig` (one config for every generator, named by ``kind``) and
  :func:`build_generator` (through the component registry);
* :mod:`.diffusers_pipeline` - any diffusers text-to-image pipeline, optionally with a trained
  U-Net or LoRA;
* :mod:`.unet` - the one loader of trained U-Nets (full folders or LoRA weights).

Importing this package imports no model code.
"""

from instructengine.generation.base import (
    Generated,
    GeneratorConfig,
    ImageGenerator,
    build_generator,
    noise_seed,
    png_bytes,
    seeds_for,
    text_noise,
)

__all__ = [
    "Generated", "GeneratorConfig", "ImageGenerator", "build_generator", "noise_seed", "png_bytes", "seeds_for",
    "text_noise",
]
