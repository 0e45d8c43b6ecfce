"""Exact resume: a crashed or SIGKILLed CPU run, resumed, gives the uninterrupted loss sequence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from instructengine.train import trainer as trainer_module
from instructengine.train.trainer import run_training

from .conftest import make_config


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


def _final_tensors(final: Path) -> dict[str, torch.Tensor]:
    f = final / "diffusion_pytorch_model.safetensors" if final.is_dir() else final
    return load_file(str(f))


RESUME_SETTINGS = dict(max_steps=6, checkpoint__every_n_steps=2, checkpoint__resume="auto",
                       data__caption_dropout=0.3, data__random_flip=True)


@pytest.mark.parametrize("lora", [False, True])
def test_crashed_run_resumes_exactly(tiny_root, tmp_path, monkeypatch, lora):
    kw = dict(RESUME_SETTINGS, lora__enabled=lora, lora__rank=2)
    reference = run_training(make_config(tiny_root, tmp_path / "a", "shapes", "cv_dpo", **kw))

    calls = {"n": 0}
    original = trainer_module.Trainer._preference_step

    def crash_in_step_4(self, batch):
        calls["n"] += 1
        if calls["n"] == 7:  # step 4, micro-batch 1 (2 micro-batches per step)
            raise RuntimeError("simulated crash")
        return original(self, batch)

    cfg = make_config(tiny_root, tmp_path / "b", "shapes", "cv_dpo", **kw)
    monkeypatch.setattr(trainer_module.Trainer, "_preference_step", crash_in_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg)
    monkeypatch.setattr(trainer_module.Trainer, "_preference_step", original)
    out = tmp_path / "b" / "train" / "cv_dpo"
    assert [s for s, _ in _losses(out)] == [1, 2, 3] and not (out / "final").exists()

    resumed = run_training(cfg)
    assert _losses(resumed.output_dir) == _losses(reference.output_dir)  # bit-identical floats
    a, b = _final_tensors(reference.final_path), _final_tensors(resumed.final_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["resumed_from"].endswith("checkpoint-2")


def test_sigkilled_subprocess_resumes_exactly(tiny_root, tmp_path):
    # 8 micro-batches per step so a step takes long enough to be killed inside it
    kw = dict(RESUME_SETTINGS, max_steps=8, batch_size=16)
    cfg = make_config(tiny_root, tmp_path / "killed", "shapes", "cv_dpo", **kw)
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "killed" / "train" / "cv_dpo"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "instructengine.train.cli", "run", "--config", str(cfg_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished or failed before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "final").exists()
    resumed = run_training(cfg)
    reference = run_training(make_config(tiny_root, tmp_path / "straight", "shapes", "cv_dpo", **kw))
    assert _losses(resumed.output_dir) == _losses(reference.output_dir)
    assert len(_losses(reference.output_dir)) == 8


def test_finished_run_extends_exactly(tiny_root, tmp_path):
    kw = dict(checkpoint__every_n_steps=100, checkpoint__resume="auto", data__caption_dropout=0.3)
    short = run_training(make_config(tiny_root, tmp_path / "x", "shapes", "diffusion_dpo", max_steps=3, **kw))
    assert (short.output_dir / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()  # checkpoint.at_end
    extended = run_training(make_config(tiny_root, tmp_path / "x", "shapes", "diffusion_dpo", max_steps=5, **kw))
    straight = run_training(make_config(tiny_root, tmp_path / "y", "shapes", "diffusion_dpo", max_steps=5, **kw))
    assert extended.steps == 5 and _losses(extended.output_dir) == _losses(straight.output_dir)
    with pytest.raises(ValueError, match="beyond max_steps=4"):
        run_training(make_config(tiny_root, tmp_path / "x", "shapes", "diffusion_dpo", max_steps=4, **kw))
