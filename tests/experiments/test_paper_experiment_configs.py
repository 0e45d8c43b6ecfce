"""The paper-experiment configs (Table 1, data efficiency; ShapesWorld and SD1.5): every prepare step's
data-pipeline config with its overrides validates, and the arms read the data the steps write."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructengine.config import load_config
from instructengine.experiments.data_efficiency import DataEfficiencyConfig
from instructengine.experiments.table1 import Table1Config
from instructengine.images.config import DataPipelineConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = {"table1_shapes.yaml": Table1Config, "table1_sd15.yaml": Table1Config,
         "data_efficiency_shapes.yaml": DataEfficiencyConfig, "data_efficiency_sd15.yaml": DataEfficiencyConfig}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_prepare_steps_validate(name, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # the steps name configs relative to the repository root
    cfg = load_config(PAPER[name], CONFIGS / name)
    pipelines = [s for s in cfg.prepare if s.kind == "data_pipeline"]
    assert pipelines, name
    for step in pipelines:
        data = load_config(DataPipelineConfig, step.options["config"], step.options.get("overrides", []))
        assert set(step.options.get("stages", [])) <= {"candidates", "select", "judge", "dataset", "baselines"}
        if step.name != "ours":  # the foreign prompt list replaces the taxonomy's pairs
            assert data.candidates.prompt_list is not None and data.candidates.prompt_list.column == "caption"
            assert len(data.baselines) == 1  # one reward: the best/worst of N the arm trains on


def test_table1_arms_read_what_the_steps_write(monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    for name in ("table1_shapes.yaml", "table1_sd15.yaml"):
        cfg = load_config(Table1Config, CONFIGS / name)
        runs = {s.name: load_config(DataPipelineConfig, s.options["config"], s.options["overrides"]).run_dir
                for s in cfg.prepare if s.kind == "data_pipeline"}
        paths = {a.name: next((o.split("=", 1)[1] for o in a.overrides if o.startswith("data.path=")), None)
                 for a in cfg.arms}
        ours, foreign = runs["ours"], next(v for k, v in runs.items() if k != "ours")
        reward = [a for a in cfg.arms if a.method == "reward_dpo"]
        assert len(reward) == 2, name  # best/worst on foreign prompts and on the taxonomy's
        assert {Path(paths[a.name]).parent.parent for a in reward} == {Path(ours), Path(foreign)}
        assert cfg.train["data"]["path"] == f"{ours}/images"  # CV-DPO on InstructEngine samples
        assert {a.method for a in cfg.arms} == {None, "cv_dpo", "diffusion_dpo", "reward_dpo", "refl"}
