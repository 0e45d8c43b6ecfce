"""The main job: one config, every hand-off derived from run_dir, on ShapesWorld shrunk to seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from instructengine.cli import main
from instructengine.config import ConfigError, apply_overrides, load_config
from instructengine.experiments.main_job import MainJobConfig, load_main_job, stage_configs

SMALL = [
    "data.candidates.max_pairs=12", "data.candidates.n_candidates=2", "data.baselines=[]",
    "train.max_steps=2", "train.batch_size=2", "train.micro_batch_size=2", "train.checkpoint.every_n_steps=1",
    "train.threads=1",
    "eval.benchmark.limit=6", "eval.images_per_prompt=1", "eval.batch_size=8", "eval.report.grid_prompts=2",
    "eval.report.grid_seeds=1", "eval.report.bootstrap_samples=100", "eval.models.base.num_inference_steps=4",
]


def test_stage_configs_tie_the_stages_together(tmp_path):
    cfg = load_main_job("configs/shapes_demo.yaml", [f"run_dir={tmp_path}", "train.max_steps=7"])
    c = stage_configs(cfg)
    assert Path(c["data"].run_dir) == tmp_path
    train = c["train"]["cv-dpo"]
    assert Path(train.data.path) == tmp_path / "images" and train.max_steps == 7 and train.method == "cv_dpo"
    names = [m.name for m in c["eval"].models]
    assert names == ["base", "cv-dpo"] and c["eval"].report.base == "base"
    assert c["eval"].models[1].unet == str(tmp_path / "train" / "cv-dpo" / "final" / "unet")
    assert c["eval"].models[0].unet is None and c["eval"].models[1].kind == c["eval"].models[0].kind


def test_methods_read_the_data_they_name(tmp_path):
    cfg = load_main_job("configs/shapes_demo.yaml", [
        f"run_dir={tmp_path}",
        "methods=[{name: ie, method: cv_dpo}, {name: rw, method: reward_dpo, data: 'baseline:reward', "
        "overrides: [loss.anchor_weight=0]}, {name: ext, method: sft, data: /elsewhere, overrides: [loss.anchor_weight=0]}]"])
    c = stage_configs(cfg)
    assert Path(c["train"]["rw"].data.path) == tmp_path / "baselines" / "reward"
    assert c["train"]["ext"].data.path == "/elsewhere" and c["train"]["rw"].loss.anchor_weight == 0
    assert [m.name for m in c["eval"].models] == ["base", "ie", "rw", "ext"]
    bad = load_main_job("configs/shapes_demo.yaml", ["methods=[{name: x, data: 'baseline:nope'}]"])
    with pytest.raises(ConfigError, match="no baseline 'nope'"):
        stage_configs(bad)
    only = load_main_job("configs/shapes_demo.yaml", [f"run_dir={tmp_path}", "only_methods=[ie]",
                                                      "methods=[{name: ie}, {name: other, method: diffusion_dpo}]"])
    assert list(stage_configs(only)["train"]) == ["ie"]


def test_stage_files_resolve_against_the_main_config_not_the_cwd(tmp_path, monkeypatch):
    config = Path("configs/shapes_demo.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    cfg = load_main_job(config, [f"run_dir={tmp_path / 'run'}"])
    assert cfg.data.config == config.parent / "data_shapes.yaml"
    stage_configs(cfg)  # every file found from another folder


def test_list_sections_take_overrides_by_index_or_name():
    data = {"baselines": [{"name": "hpsv2", "scorers": [{"kind": "hpsv2"}]},
                          {"name": "agf", "scorers": ["clip", {"kind": "vqa"}]}]}
    out = apply_overrides(data, ["baselines.hpsv2.scorers.0.device=cpu", "baselines.1.scorers.clip.device=cuda",
                                 "baselines.agf.scorers.vqa.options.llm.model=m"])
    assert out["baselines"][0]["scorers"][0] == {"kind": "hpsv2", "device": "cpu"}
    assert out["baselines"][1]["scorers"][0] == {"kind": "clip", "device": "cuda"}
    assert out["baselines"][1]["scorers"][1]["options"] == {"llm": {"model": "m"}}
    assert data["baselines"][0]["scorers"][0] == {"kind": "hpsv2"}  # the input is not changed
    with pytest.raises(ConfigError, match=r"'baselines' has no entry 'hpsx'; name one of \['hpsv2', 'agf'\]"):
        apply_overrides(data, ["baselines.hpsx.scorers.0.device=cpu"])
    with pytest.raises(ConfigError, match=r"'baselines.hpsv2.scorers' has 1 entries; index 3 is out of range"):
        apply_overrides(data, ["baselines.hpsv2.scorers.3.device=cpu"])


def test_a_bad_stage_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("method: cv_dpo\nmax_stepz: 3\n")
    cfg = load_main_job("configs/shapes_demo.yaml", [f"run_dir={tmp_path / 'run'}", f"train.config={bad}"])
    with pytest.raises(ConfigError, match="max_stepz"):
        stage_configs(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="stages"):
        load_config(MainJobConfig, "configs/shapes_demo.yaml", ["stages=[data,fly]"])
    assert main(["run", "--config", "configs/shapes_demo.yaml", f"run_dir={tmp_path / 'run2'}", "train.max_stepz=3"]) == 2
    assert not (tmp_path / "run2").exists()


def test_main_job_end_to_end_small_and_rerun_does_nothing(tmp_path):
    run = tmp_path / "demo"
    argv = ["run", "--config", "configs/shapes_demo.yaml", f"run_dir={run}", *SMALL]
    assert main(argv) == 0
    samples = pd.read_parquet(run / "images" / "samples.parquet")
    assert len(samples) > 0 and (run / "images" / "README.md").is_file()
    assert (run / "train" / "cv-dpo" / "final" / "unet" / "config.json").is_file()
    for model in ("base", "cv-dpo"):
        assert (run / "eval" / model / "shapesbench" / "scores.parquet").is_file()
    gen = json.loads((run / "eval" / "cv-dpo" / "shapesbench" / "generation.json").read_text())
    assert gen["model"]["unet"] == str(run / "train" / "cv-dpo" / "final" / "unet")
    report = json.loads((run / "report" / "shapesbench" / "report.json").read_text())
    assert report["n_images"] == 6 and "exact" in report["metrics"] and set(report["models"]) == {"base", "cv-dpo"}
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "train" / "cv-dpo" / "final" / "README.md")  # the report filled in its metrics
    assert card.data.instructengine_eval["shapesbench"]["exact"] == pytest.approx(report["means"]["cv-dpo"]["exact"])
    assert "## Evaluation" in card.text and "Not evaluated yet" not in card.text
    for name in ("config.yaml", "config.data.yaml", "config.train.cv-dpo.yaml", "config.eval.yaml"):
        assert (run / name).is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["overrides"][0] == "max_steps=2"  # routed to the stage, saved beside the outputs
    made = sorted(run.glob("candidates/**/*.png")) + sorted(run.glob("eval/**/*.png"))
    made += sorted(run.glob("train/**/*.safetensors"))
    assert len(made) > 12
    before = {p: p.stat().st_mtime_ns for p in made}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in made} == before
    assert os.stat(run / "report" / "shapesbench" / "report.md").st_size > 0
