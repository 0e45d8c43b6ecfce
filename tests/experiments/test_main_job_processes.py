"""The main job under ``accelerate launch`` with 2 CPU processes (gloo): the candidates, the training
and the evaluation's generation and scoring spread over both processes, the text stages, judges and
report once. The base model's evaluation equals a one-process evaluation of the same config, image
for image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from test_main_job import SMALL

from instructengine.config import validate_config
from instructengine.evaluate.config import EvalConfig
from instructengine.evaluate.runner import evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_main_job_on_two_cpu_processes(tmp_path):
    run = tmp_path / "demo"
    small = [o.replace("train.batch_size=2", "train.batch_size=4") for o in SMALL]  # 2 processes x micro-batch 2
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "instructengine.cli", "run", "--config", str(ROOT / "configs" / "shapes_demo.yaml"),
           f"run_dir={run}", *small, "eval.images_per_prompt=2", "data.candidates.instructions_per_call=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one log of the main job, not two
    assert proc.stdout.count("[main] stage data\n") == 1

    ranks = [json.loads((run / "candidates" / f"run-shard0-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["generated"] > 0 for r in ranks)
    train = json.loads((run / "train" / "cv-dpo" / "manifest.json").read_text())
    assert train["extra"]["processes"] == 2 and train["extra"]["steps"] == 2
    for model in ("base", "cv-dpo"):
        folder = run / "eval" / model / "shapesbench"
        gen = json.loads((folder / "generation.json").read_text())
        assert gen["processes"] == 2
        assert not list(folder.glob("images.progress.rank*.jsonl")), "the other process's ledger was not merged"
        assert len(pd.read_parquet(folder / "scores.parquet")) == 12  # 6 prompts x 2 seeds
        ledger = [json.loads(ln) for ln in (folder / "images.progress.jsonl").read_text().splitlines()]
        assert len({r["key"] for r in ledger}) == 12
    report = json.loads((run / "report" / "shapesbench" / "report.json").read_text())
    assert set(report["models"]) == {"base", "cv-dpo"}

    # the same base evaluation in one process: the same images, the same scores
    data = yaml.safe_load((run / "config.eval.yaml").read_text())
    data.update(run_dir=str(tmp_path / "one"), models=data["models"][:1], judge={"enabled": False})
    data["report"]["models"] = None
    evaluate(validate_config(EvalConfig, data, "one process"), log=lambda s: None)
    two, one = run / "eval" / "base" / "shapesbench", tmp_path / "one" / "eval" / "base" / "shapesbench"
    pngs = sorted(p.relative_to(two) for p in two.rglob("*.png"))
    assert len(pngs) == 12 and pngs == sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert all((two / p).read_bytes() == (one / p).read_bytes() for p in pngs)
    a = pd.read_parquet(two / "scores.parquet").sort_values(["prompt_index", "seed"]).reset_index(drop=True)
    b = pd.read_parquet(one / "scores.parquet").sort_values(["prompt_index", "seed"]).reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a.to_numpy(dtype=float), b.to_numpy(dtype=float), rtol=0, atol=1e-6)
