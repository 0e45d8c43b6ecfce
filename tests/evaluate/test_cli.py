"""The typer app, run in-process: eval + report from a YAML with dotted overrides; clean errors."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from instructengine.evaluate.cli import app


def test_eval_and_report_commands(tmp_path):
    (tmp_path / "p.txt").write_text("a red car\na blue dog\n")
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "benchmark": {"name": "mini", "path": str(tmp_path / "p.txt")},
        "models": [{"name": "a", "kind": "eval_fakes:make_colour_generator"},
                   {"name": "b", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.1}}],
        "scorers": ["eval_fakes:make_redness"],
        "report": {"bootstrap_samples": 20, "grid_prompts": 1},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--config", str(tmp_path / "eval.yaml"), "images_per_prompt=3", "report.after_eval=false"])
    assert res.exit_code == 0, res.output
    assert "generating 6 images" in res.output
    assert not (tmp_path / "run" / "report").exists()
    res = runner.invoke(app, ["report", "--config", str(tmp_path / "eval.yaml"), "report.base=b", "report.title=Mini"])
    assert res.exit_code == 0, res.output
    js = json.loads((tmp_path / "run" / "report" / "mini" / "report.json").read_text())
    assert js["base"] == "b" and js["n_images"] == 6
    assert (tmp_path / "run" / "report" / "mini" / "report.md").read_text().startswith("# Mini")

    res = runner.invoke(app, ["eval", "--config", str(tmp_path / "eval.yaml"), "images_per_prompt=0"])
    assert res.exit_code == 2 and "images_per_prompt" in res.output
    res = runner.invoke(app, ["report", "--config", str(tmp_path / "eval.yaml"), "benchmark.name=other"])
    assert res.exit_code == 2 and "no prompts.parquet" in res.output
