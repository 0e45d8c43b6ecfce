"""The ablation runner on an SD1.5-kind config (tiny random-weight pipeline in the hub layout):
training arms through the trainer, every model sampled through the harness's diffusers generator
with the arm's U-Net swapped in, scored, tabulated. The ShapesWorld evaluator is nowhere involved."""

from __future__ import annotations

import json

import pandas as pd

from instructengine.config import validate_config
from instructengine.experiments.ablation import AblationConfig, run_ablation
from instructengine.train.tiny import save_model, tiny_components, write_samples


def test_ablation_runs_on_sd15(tmp_path):
    save_model("sd15", tiny_components("sd15"), tmp_path / "sd15")
    write_samples(tmp_path / "data", n=8, size=16)
    prompts = tmp_path / "test.csv"
    prompts.write_text("prompt,category\na red square,colour\na blue bar,colour\na green square,colour\n")
    cfg = validate_config(AblationConfig, {
        "name": "sd15_mini", "run_dir": str(tmp_path / "runs"), "seeds": [0],
        "train": {"model": {"kind": "sd15", "path": str(tmp_path / "sd15")},
                  "data": {"path": str(tmp_path / "data"), "resolution": 16},
                  "batch_size": 2, "micro_batch_size": 2, "max_steps": 2, "device": "cpu", "tensorboard": False,
                  "optim": {"lr": 1e-2}},
        "arms": [{"name": "base", "method": None}, {"name": "cv", "method": "cv_dpo"},
                 {"name": "lora", "method": "cv_dpo", "overrides": ["lora.enabled=true", "lora.rank=2"]}],
        "evaluation": {"generator": {"kind": "diffusers", "model": str(tmp_path / "sd15"), "num_inference_steps": 2, "height": 16, "width": 16,
                                     "local_files_only": True},
                       "scorers": ["eval_fakes:make_redness"], "batch_size": 3},
        "test_prompts": str(prompts), "test_seeds": [0, 1], "bootstrap": 100,
    }, "test")
    table = run_ablation(cfg)
    text = table.read_text()
    assert [ln.split("|")[1].strip() for ln in text.splitlines()[2:5]] == ["base", "cv", "lora"]
    root = table.parent
    scores = {n: pd.read_parquet(root / "scores" / f"{n}.parquet") for n in ("base", "cv-seed0", "lora-seed0")}
    assert all(len(df) == 6 and df["redness"].notna().all() for df in scores.values())
    # the trained U-Nets were really swapped in: their images differ from the base model's
    assert not scores["cv-seed0"]["redness"].equals(scores["base"]["redness"])
    assert not scores["lora-seed0"]["redness"].equals(scores["base"]["redness"])
    gen = json.loads((root / "eval" / "cv-seed0" / "test" / "generation.json").read_text())
    assert gen["generator"]["pipeline_class"] == "StableDiffusionPipeline"
    assert gen["model"]["unet"].endswith("cv-seed0/final/unet")
    summary = json.loads((root / "summary.json").read_text())
    assert summary["summary"]["cv"]["redness"]["n"] == 6
