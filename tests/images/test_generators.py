"""Generator backends: one batched call, per-image seeds independent of batch neighbours, AGFSync
text-condition noise, loading by local folder, clear errors."""

import numpy as np
import pytest
from images_helpers import save_tiny_sd_pipeline

from instructengine.config import ConfigError, load_config
from instructengine.generation import GeneratorConfig, build_generator
from instructengine.generation.diffusers_pipeline import DiffusersGenerator
from instructengine.images.config import DataPipelineConfig
from instructengine.shapes.generators import ShapesModelGenerator, ShapesRenderGenerator
from instructengine.shapes.oracle import judge


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def test_renderer_is_exact_and_seeded():
    gen = build_generator(GeneratorConfig(kind="shapes_render"))
    assert isinstance(gen, ShapesRenderGenerator)
    prompts = ["two small red circles", "a large blue square above a small green triangle"]
    out = gen.generate(prompts, [5, 6])
    assert all(judge(im, p)["exact"] for im, p in zip(out.images, prompts))
    again = gen.generate(prompts[::-1], [6, 5])
    assert np.array_equal(out.images[0], again.images[1])
    assert not np.array_equal(out.images[0], gen.generate(prompts[:1], [7]).images[0])
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        gen.generate(prompts, [1])


def test_shapes_model_images_depend_only_on_prompt_and_seed(tiny_shapes_model):
    cfg = GeneratorConfig(kind="shapes_model", model=str(tiny_shapes_model), num_inference_steps=2)
    gen = build_generator(cfg)
    assert isinstance(gen, ShapesModelGenerator)
    prompts = ["a small red circle"] * 3 + ["two large blue squares"]
    out = gen.generate(prompts, [1, 2, 3, 4])
    assert len(out.images) == 4 and out.images[0].shape == (32, 32, 3) and out.images[0].dtype == np.uint8
    assert not np.array_equal(out.images[0], out.images[1])  # N candidates differ by seed
    # the same call gives the same pixels; in a batch of another size an image is the same up to
    # CPU rounding (which is why the candidates stage never regroups its calls)
    assert all(np.array_equal(a, b) for a, b in zip(out.images, gen.generate(prompts, [1, 2, 3, 4]).images))
    alone = gen.generate(prompts[2:3], [3])
    assert _close(out.images[2], alone.images[0])
    noisy = build_generator(cfg.model_copy(update={"text_noise_sigma": 2.0}))
    assert noisy.fingerprint != gen.fingerprint
    n1 = noisy.generate(prompts, [1, 2, 3, 4])
    assert sum(not _close(a, b) for a, b in zip(n1.images, out.images)) >= 2
    assert _close(n1.images[3], noisy.generate(prompts[3:], [4]).images[0])  # the noise is per-image seeded


def _close(a, b) -> bool:
    """Equal up to CPU rounding: at most one grey level apart, in under 1% of the values."""
    d = np.abs(a.astype(int) - b.astype(int))
    return d.max() <= 1 and (d > 0).mean() < 0.01


def test_diffusers_pipeline_from_a_local_folder(tiny_sd):
    cfg = GeneratorConfig(kind="diffusers", model=str(tiny_sd), num_inference_steps=2, local_files_only=True)
    gen = build_generator(cfg)
    assert isinstance(gen, DiffusersGenerator) and not gen.can_flag
    prompts = ["a red circle", "two blue squares", "a cat portrait"]
    out = gen.generate(prompts, [10, 11, 12])
    assert [im.shape for im in out.images] == [(16, 16, 3)] * 3 and out.flagged is None
    assert _close(out.images[1], gen.generate(prompts[1:2], [11]).images[0])
    # AGFSync's text-condition noise goes through encode_prompt (SD-style: 2 embeddings)
    noisy = build_generator(cfg.model_copy(update={"text_noise_sigma": 0.5}))
    n = noisy.generate(prompts, [10, 11, 12])
    assert all(not _close(a, b) for a, b in zip(n.images, out.images))
    assert _close(n.images[2], noisy.generate(prompts[2:], [12]).images[0])
    swapped = build_generator(cfg.model_copy(update={"scheduler": "EulerDiscreteScheduler"}))
    assert type(swapped.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    with pytest.raises(ValueError, match="no scheduler class 'NoSuchScheduler'"):
        build_generator(cfg.model_copy(update={"scheduler": "NoSuchScheduler"}))


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="kind 'diffusers' needs `model`"):
        load_config(DataPipelineConfig, None, ["generator.kind=diffusers", "generator.model=null"])
    with pytest.raises(ValueError, match=r"unknown generator 'no_such'; registered: \[.*'diffusers'"):
        build_generator(GeneratorConfig(kind="no_such"))
    with pytest.raises(ConfigError, match="generator.text_noise_sigma"):
        load_config(DataPipelineConfig, None, ["generator.text_noise_sigma=-1"])
    with pytest.raises(ValueError, match="built str, which lacks"):
        build_generator(GeneratorConfig(kind="builtins:str"))
    with pytest.raises(FileNotFoundError, match="model_index.json missing"):
        build_generator(GeneratorConfig(kind="shapes_model", model=str(tmp_path)))
    # what determines pixels is in the fingerprint, the device is not
    a = GeneratorConfig(kind="shapes_render")
    assert a.fingerprint() == a.model_copy(update={"device": "cuda"}).fingerprint()
    assert a.fingerprint() != a.model_copy(update={"guidance_scale": 9.0}).fingerprint()
