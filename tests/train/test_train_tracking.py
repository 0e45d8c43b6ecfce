"""Experiment tracking of a training run: tensorboard (and wandb, offline) through accelerate's trackers,
validation images of fixed prompts and seeds, the resolved config as hyper-parameters, the progress
line -- and none of it changes the training numbers or exact resume."""

from __future__ import annotations

import glob
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from instructengine.train import trainer as trainer_module
from instructengine.train.trainer import flat_hparams, run_training

from .conftest import make_config

PROMPTS = ["a red square", "two blue bars"]
SEEDS = [0, 3]
VALIDATION = {"prompts": PROMPTS, "seeds": SEEDS, "every_n_steps": 2, "num_inference_steps": 3,
              "guidance_scale": 3.0}


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())]


def _final(final: Path) -> dict[str, torch.Tensor]:
    return load_file(str(final / "diffusion_pytorch_model.safetensors" if final.is_dir() else final))


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_flat_hparams_by_hand():
    assert flat_hparams({"method": "cv_dpo", "optim": {"lr": 1e-5, "betas": [0.9, 0.99]}, "name": None,
                         "lora": {"enabled": False}, "refl": {"reward_kwargs": {}}}) == {
        "method": "cv_dpo", "optim.lr": 1e-5, "optim.betas": "[0.9, 0.99]", "name": "null", "lora.enabled": False,
        "refl.reward_kwargs": "{}"}


@pytest.mark.parametrize("kind", ["shapes", "sd15"])
def test_tensorboard_scalars_images_and_hparams_leave_training_unchanged(tiny_root, tmp_path, kind):
    common = dict(max_steps=3, lora__enabled=True, lora__rank=2, lora__dropout=0.2, data__caption_dropout=0.3)
    plain = run_training(make_config(tiny_root, tmp_path / "plain", kind, "cv_dpo", **common))
    tracked = run_training(make_config(tiny_root, tmp_path / "tracked", kind, "cv_dpo", tensorboard=True,
                                       validation=VALIDATION, **common))
    # trackers and validation sampling touch no random state the training draws from
    assert _losses(tracked.output_dir) == _losses(plain.output_dir)
    a, b = _final(plain.final_path), _final(tracked.final_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (plain.output_dir / "tensorboard").exists() and not (plain.output_dir / "validation").exists()

    out = tracked.output_dir
    ea = _events(out / "tensorboard")
    assert {"train/loss", "train/lr", "train/grad_norm", "train/implicit_acc_x1"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [s for s, _ in _losses(out)]
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([v for _, v in _losses(out)], rel=1e-6)
    # validation at step 0 (the base model), every 2 steps and at the last step
    shots = ea.Images("validation")
    assert [e.step for e in shots] == [0, 2, 3]
    side = 16
    saved = sorted(p.name for p in (out / "validation").glob("step-*.png"))
    assert saved == ["step-000000.png", "step-000002.png", "step-000003.png"]
    for event, name in zip(shots, saved):
        # tensorboard tiles the 4 images in one row; our grid has one row per prompt, one column per seed
        tiles = _png(event.encoded_image_string)
        assert tiles.shape == (side, 4 * side, 3)
        grid = np.asarray(Image.open(out / "validation" / name).convert("RGB"))
        assert grid.shape == (2 * side, 2 * side, 3)
        for i in range(4):
            r, c = divmod(i, 2)
            assert np.array_equal(tiles[:, i * side:(i + 1) * side], grid[r * side:(r + 1) * side, c * side:(c + 1) * side])
    before, after = (_png(e.encoded_image_string) for e in (shots[0], shots[-1]))
    assert not np.array_equal(before, after)  # the trained LoRA changes the samples
    meta = json.loads((out / "validation" / "prompts.json").read_text())
    assert meta["prompts"] == PROMPTS and meta["seeds"] == SEEDS and meta["resolution"] == side
    # the resolved config as hyper-parameters (tensorboard's hparams plugin, and accelerate's hparams.yml)
    from tensorboard.plugins.hparams import plugin_data_pb2

    runs = [Path(p).parent for p in glob.glob(str(out / "tensorboard" / "*" / "events.*"))]
    assert len(runs) == 1
    info = plugin_data_pb2.HParamsPluginData.FromString(
        _events(runs[0]).PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert info.hparams["optim.lr"].number_value == pytest.approx(1e-3)
    assert info.hparams["model.kind"].string_value == kind
    assert info.hparams["lora.enabled"].number_value == 1  # torch writes a bool as a number
    (hparams,) = glob.glob(str(out / "tensorboard" / "*" / "hparams.yml"))
    assert yaml.safe_load(Path(hparams).read_text())["validation.every_n_steps"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["validation"] == str(out / "validation") and manifest["timings_s"]["validation"] > 0


def test_validation_images_equal_the_diffusers_pipeline_at_step_0(tiny_root, tmp_path):
    """The adapter's sampler against diffusers' own StableDiffusionPipeline with a DDIM scheduler
    (trailing spacing), the same per-image CPU generators, guidance and the base weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    cfg = make_config(tiny_root, tmp_path, "sd15", "cv_dpo", max_steps=1, validation=VALIDATION)
    out = run_training(cfg).output_dir
    grid = np.asarray(Image.open(out / "validation" / "step-000000.png").convert("RGB")).astype(int)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_root / "sd15", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", steps_offset=0)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in PROMPTS for _ in SEEDS]
    images = pipe(prompts, num_inference_steps=3, guidance_scale=3.0, height=16, width=16, output_type="np",
                  generator=[torch.Generator("cpu").manual_seed(s) for _ in PROMPTS for s in SEEDS]).images
    expected = np.round(np.clip(images, 0, 1) * 255).astype(int)
    for i in range(4):
        r, c = divmod(i, 2)
        tile = grid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
        assert np.abs(tile - expected[i]).max() <= 1  # float rounding only
    assert np.abs(expected[0] - expected[1]).max() > 0  # another seed, another image


def test_resume_with_trackers_is_exact_and_tensorboard_has_each_step_once(tiny_root, tmp_path, monkeypatch):
    kw = dict(max_steps=5, checkpoint__every_n_steps=2, checkpoint__resume="auto", data__caption_dropout=0.3,
              tensorboard=True, validation=dict(VALIDATION, at_start=False))
    reference = run_training(make_config(tiny_root, tmp_path / "a", "shapes", "cv_dpo", **kw))
    original = trainer_module.Trainer._preference_step
    calls = {"n": 0}

    def crash_in_step_4(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    cfg = make_config(tiny_root, tmp_path / "b", "shapes", "cv_dpo", **kw)
    monkeypatch.setattr(trainer_module.Trainer, "_preference_step", crash_in_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg)
    monkeypatch.setattr(trainer_module.Trainer, "_preference_step", original)
    resumed = run_training(cfg)
    assert _losses(resumed.output_dir) == _losses(reference.output_dir)
    ea = _events(resumed.output_dir / "tensorboard")
    # step 3 was logged before the crash, then purged: the checkpoint is at step 2
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([v for _, v in _losses(reference.output_dir)])
    assert [e.step for e in ea.Images("validation")] == [2, 4, 5]


def test_progress_line_of_a_tiny_training(tiny_root, tmp_path, monkeypatch, capsys):
    from instructengine.progress import set_quiet

    monkeypatch.setenv("INSTRUCTENGINE_PROGRESS_INTERVAL", "0")
    set_quiet(False)
    try:
        run_training(make_config(tiny_root, tmp_path / "loud", "shapes", "cv_dpo", max_steps=3))
    finally:
        set_quiet(None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train cv_dpo:")]
    assert [ln.split(" (")[0] for ln in lines] == ["train cv_dpo: 1/3", "train cv_dpo: 2/3", "train cv_dpo: 3/3",
                                                   "train cv_dpo: 3/3"]
    assert "ETA" in lines[0] and (" step/s" in lines[0] or " s/step" in lines[0])
    assert "loss=0.6931" in lines[0] and "acc=" in lines[0]  # policy == reference at step 1: log 2
    assert " in " in lines[-1]
    set_quiet(True)
    try:
        run_training(make_config(tiny_root, tmp_path / "quiet", "shapes", "cv_dpo", max_steps=2))
    finally:
        set_quiet(None)
    assert "train cv_dpo" not in capsys.readouterr().err


def _wandb_records(path: Path) -> list:
    """Records of a ``.wandb`` file: a leveldb-style log (7-byte header, 32 KiB blocks of chunks
    ``crc32 | length (u16 LE) | type (1 full, 2 first, 3 middle, 4 last)``) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline(tiny_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_training(make_config(tiny_root, tmp_path, "shapes", "cv_dpo", max_steps=2, wandb=True,
                                      validation=dict(VALIDATION, every_n_steps=1, at_start=False)))
    (run_file,) = glob.glob(str(result.output_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    import time

    deadline = time.time() + 60  # wandb's service may still be writing the file when finish() returns
    records = _wandb_records(Path(run_file))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.time() < deadline:
        time.sleep(0.5)
        records = _wandb_records(Path(run_file))
    history: dict[int, dict[str, str]] = {}
    config: dict[str, str] = {}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            history.setdefault(int(items["_step"]), {}).update(items)
        elif kind == "config":
            config.update({i.key: i.value_json for i in rec.config.update})
        elif kind == "run":  # wandb may fold an early config update into the run record
            config.update({i.key: i.value_json for i in rec.run.config.update})
    assert json.loads(config["optim.lr"]) == pytest.approx(1e-3) and json.loads(config["method"]) == "cv_dpo"
    assert sorted(history) == [1, 2]
    for step, loss in _losses(result.output_dir):
        assert float(history[step]["train/loss"]) == pytest.approx(loss)
        assert json.loads(history[step]["validation/count"]) == 4
        assert json.loads(history[step]["validation/captions"])[0] == "a red square (seed 0)"


def test_wandb_requested_but_missing_is_one_clear_error(tiny_root, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ValueError, match=r"wandb: true needs the wandb package"):
        run_training(make_config(tiny_root, tmp_path, "shapes", "cv_dpo", wandb=True))


def test_validation_config_needs_prompts(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="validation needs `prompts`"):
        make_config(tiny_root, tmp_path, "shapes", "cv_dpo", validation={"seeds": [0]})


def test_cli_quiet_flag(tiny_root, tmp_path, monkeypatch, capsys):
    from instructengine.cli import main
    from instructengine.progress import is_quiet

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("INSTRUCTENGINE_QUIET", raising=False)
    monkeypatch.setenv("INSTRUCTENGINE_PROGRESS_INTERVAL", "0")
    for name, flag in (("loud", []), ("quiet", ["--quiet"])):
        cfg = make_config(tiny_root, tmp_path / name, "shapes", "sft", max_steps=2)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        assert main(["train", "run", "--config", str(path), *flag]) == 0
        err = capsys.readouterr().err
        assert ("train sft: 2/2" in err) == (not flag), err[-500:]
    assert is_quiet()  # the flag holds for the rest of this process ...
    cfg_path = tmp_path / "loud.yaml"
    assert main(["train", "run", "--config", str(cfg_path)]) == 0  # ... until a command without it
    assert not is_quiet()


def test_bf16_cpu_run_validates_in_float32_and_trains_as_without(tiny_root, tmp_path):
    """accelerate wraps a bf16 model's forward in autocast; on a CPU validation bypasses it (bf16
    sampling is ~10x slower there): the step-0 grid equals a float32 sampling of the base weights."""
    from diffusers import UNet2DConditionModel

    from instructengine.train.config import ValidationConfig
    from instructengine.train.models import load_adapter
    from instructengine.train.validation import Validator, image_grid

    common = dict(max_steps=2, mixed_precision="bf16")
    plain = run_training(make_config(tiny_root, tmp_path / "plain", "shapes", "cv_dpo", **common))
    cfg = make_config(tiny_root, tmp_path / "val", "shapes", "cv_dpo", validation=VALIDATION, **common)
    tracked = run_training(cfg)
    assert _losses(tracked.output_dir) == _losses(plain.output_dir)

    adapter = load_adapter(cfg.model)
    adapter.to("cpu", torch.bfloat16, torch.float32)  # the text encoder as the bf16 run holds it
    unet = UNet2DConditionModel.from_pretrained(tiny_root / "shapes" / "unet").eval()
    ref = Validator(ValidationConfig(**VALIDATION), 16, tmp_path / "ref").sample(adapter, unet, dtype=torch.float32)
    grid = np.asarray(Image.open(tracked.output_dir / "validation" / "step-000000.png").convert("RGB"))
    assert np.array_equal(grid, np.asarray(image_grid(ref, 2, 2)))
