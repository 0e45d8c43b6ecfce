"""The candidates stage across processes: sharded over 2 CPU processes with accelerate, and
SIGKILLed mid-stage then re-run; both give the artifacts of an uninterrupted single-process run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from images_helpers import assert_same_candidates, make_config, stage_artifacts, write_config, write_pairs

from instructengine.images.candidates import run_candidates

HERE = Path(__file__).resolve().parent
CAPTIONS = [
    ("a small red circle", "two small red circles"),
    ("a large blue square left of a small green triangle", "a large blue square right of a small green triangle"),
    ("three small yellow triangles", "three small broken yellow triangles"),
    ("a large magenta circle , vivid , clean background", "a large magenta circle , dull , noisy background"),
]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tiny_model_config(run: Path, model: Path, n_pairs: int, **candidates):
    write_pairs(run, [CAPTIONS[i % len(CAPTIONS)] for i in range(n_pairs)])
    return make_config(
        run,
        generator={"kind": "shapes_model", "model": str(model), "num_inference_steps": 2, "guidance_scale": 2.0,
                   "torch_threads": 1},
        candidates={"n_candidates": 3, **candidates},
    )


def test_two_cpu_processes_with_accelerate_match_one_process(tiny_shapes_model, tmp_path):
    ref = _tiny_model_config(tmp_path / "ref", tiny_shapes_model, 12, instructions_per_call=2)
    run_candidates(ref)
    cfg = _tiny_model_config(tmp_path / "run", tiny_shapes_model, 12, instructions_per_call=2)
    path = write_config(cfg, tmp_path / "c.yaml")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "instructengine.images.cli", "candidates", "--config", str(path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / "candidates" / f"run-shard0-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["generated"] for r in ranks] == [36, 36]  # 24 instructions x 3 images, split in halves
    m = json.loads((tmp_path / "run" / "candidates" / "manifest.json").read_text())
    assert m["extra"]["processes"] == 2 and m["counts"]["out"] == 72
    assert_same_candidates(stage_artifacts(ref.run_dir), stage_artifacts(cfg.run_dir))


def test_sigkill_mid_stage_then_rerun_gives_the_uninterrupted_artifacts(tiny_shapes_model, tmp_path):
    ref = _tiny_model_config(tmp_path / "ref", tiny_shapes_model, 30, instructions_per_call=1)
    run_candidates(ref)
    cfg = _tiny_model_config(tmp_path / "run", tiny_shapes_model, 30, instructions_per_call=1)
    path = write_config(cfg, tmp_path / "c.yaml")
    images = Path(cfg.run_dir) / "candidates" / "images"
    proc = subprocess.Popen([sys.executable, "-m", "instructengine.images.cli", "candidates", "--config", str(path)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while len(list(images.rglob("*.png"))) < 40:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = len(list(images.rglob("*.png")))
    assert not (Path(cfg.run_dir) / "candidates" / "manifest.json").exists(), "the kill came after the stage finished"
    assert 40 <= written < 180

    m = run_candidates(cfg)
    assert m.extra["generated_this_run"] == 180 - written  # nothing written before the kill is redone
    assert not list(images.rglob("*.tmp")), "a temporary file survived"
    assert_same_candidates(stage_artifacts(ref.run_dir), stage_artifacts(cfg.run_dir))
    counts = json.loads((Path(cfg.run_dir) / "candidates" / "manifest.json").read_text())["counts"]
    assert counts == json.loads((Path(ref.run_dir) / "candidates" / "manifest.json").read_text())["counts"]
