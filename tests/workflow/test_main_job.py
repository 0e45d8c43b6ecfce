"""The main job end to end on ShapesWorld, shrunk: data pipeline -> training -> evaluation -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from instructengine.cli import main
from instructengine.config import ConfigError, load_config
from instructengine.workflow import MainJobConfig, stage_configs

SMALL = {
    "data": ["candidates.max_pairs=12", "candidates.n_candidates=2", "baselines=[]"],
    "train": ["max_steps=2", "batch_size=2", "micro_batch_size=2", "checkpoint.every_n_steps=1", "threads=1"],
    "eval": ["benchmark.limit=6", "images_per_prompt=1", "batch_size=8", "report.grid_prompts=2",
             "report.grid_seeds=1", "report.bootstrap_samples=100"],
}


def _small_config(tmp_path: Path) -> Path:
    """configs/shapes_demo.yaml with each stage shrunk to seconds."""
    data = yaml.safe_load(Path("configs/shapes_demo.yaml").read_text())
    data["run_dir"] = str(tmp_path / "demo")
    for stage, overrides in SMALL.items():
        data[stage]["overrides"] = overrides
    ev = yaml.safe_load(Path(data["eval"]["config"]).read_text())
    ev["models"] = ev["models"][:1]
    ev["models"][0]["options"]["num_inference_steps"] = 4
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(ev))
    data["eval"]["config"] = str(tmp_path / "eval.yaml")
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_stage_configs_tie_the_stages_together(tmp_path):
    cfg = load_config(MainJobConfig, "configs/shapes_demo.yaml", [f"run_dir={tmp_path}"])
    c = stage_configs(cfg)
    assert Path(c["data"].run_dir) == tmp_path
    assert Path(c["train"].data.path) == tmp_path / "images"
    names = [m.name for m in c["eval"].models]
    assert names == ["base", "cv-dpo"] and c["eval"].report.base == "base"
    assert c["eval"].models[1].options["unet"] == str(tmp_path / "train" / c["train"].output_name / "final" / "unet")
    assert "unet" not in c["eval"].models[0].options


def test_a_bad_stage_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("method: cv_dpo\nmax_stepz: 3\n")
    cfg = load_config(MainJobConfig, "configs/shapes_demo.yaml", [f"run_dir={tmp_path / 'run'}", f"train.config={bad}"])
    with pytest.raises(ConfigError, match="max_stepz"):
        stage_configs(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="unknown stages"):
        load_config(MainJobConfig, "configs/shapes_demo.yaml", ["stages=[data,fly]"])


def test_main_job_end_to_end_small(tmp_path):
    run = tmp_path / "demo"
    config = _small_config(tmp_path)
    assert main(["run", "--config", str(config)]) == 0
    samples = pd.read_parquet(run / "images" / "samples.parquet")
    assert len(samples) > 0 and (run / "images" / "README.md").is_file()
    assert (run / "train" / "cv_dpo" / "final" / "unet" / "config.json").is_file()
    for model in ("base", "cv-dpo"):
        assert (run / "eval" / model / "shapesbench" / "scores.parquet").is_file()
    report = json.loads((run / "report" / "shapesbench" / "report.json").read_text())
    assert report["n_images"] == 6 and "exact" in report["metrics"]
    assert set(report["models"]) == {"base", "cv-dpo"}
    for name in ("config.yaml", "config.data.yaml", "config.train.yaml", "config.eval.yaml"):
        assert (run / name).is_file()
    # a second run repeats no work: no candidate, no training step, no evaluation image is made again
    made = sorted(run.glob("candidates/**/*.png")) + sorted(run.glob("eval/**/*.png"))
    made += sorted(run.glob("train/**/*.safetensors"))
    assert len(made) > 12
    before = {p: p.stat().st_mtime_ns for p in made}
    assert main(["run", "--config", str(config)]) == 0
    assert {p: p.stat().st_mtime_ns for p in made} == before
