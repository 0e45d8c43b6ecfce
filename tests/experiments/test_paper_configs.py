"""The paper's setups as ONE run through the CLI: ``instructengine run --config configs/{sd15,sdxl}_instructengine.yaml``
on the real bundle in miniature (tiny random-weight pipelines and scorers in their official layouts, a
local scripted OpenAI-compatible server), with overrides that only say where the weights and the
server are and shrink sizes. The SD1.5 run is killed once mid-way (SIGKILL) and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from paper_bundle import PaperVLM, build_weights, paper_overrides
from scripted_server import ScriptedServer

from instructengine.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHODS = ["instructengine", "hpsv2", "agfsync", "diffusion-dpo-wo-cv"]
SIX = ["pickscore", "imagereward", "hpsv2", "clip", "blip", "aesthetic"]
TEXT_SCHEMAS = ("themes", "subtopics", "entities", "confirm_entity", "contrast_pairs")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_weights(tmp_path_factory.mktemp("paper_weights"))


def _check_chain(run: Path, base: str) -> None:
    for rel in ("taxonomy/taxonomy.json", "entities/entities.parquet", "instructions/pairs.parquet", "candidates/candidates.parquet",
                "select/selected.parquet", "judge/judged.parquet", "images/samples.parquet", "images/README.md"):
        assert (run / rel).is_file(), rel
    samples = pd.read_parquet(run / "images" / "samples.parquet")
    assert len(samples) > 0
    for name in ("hpsv2", "agfsync", "agfsync_code"):
        assert len(pd.read_parquet(run / "baselines" / name / "preferences.parquet")) > 0, name
    agf = pd.read_parquet(run / "baselines" / "agfsync" / "candidates.parquet")
    assert {"score_vqa", "score_clip", "score_aesthetic"} <= set(agf.columns)
    for m in METHODS:
        final = run / "train" / m / "final" / "unet"
        assert (final / "config.json").is_file() and any(final.glob("*.safetensors")), m
        cfg = json.loads((run / "train" / m / "manifest.json").read_text())
        assert cfg["extra"]["steps"] == 2, m
    for model in [base, *METHODS]:
        scores = pd.read_parquet(run / "eval" / model / "drawbench" / "scores.parquet")
        assert len(scores) == 4 and scores[SIX].notna().all().all(), model
        gen = json.loads((run / "eval" / model / "drawbench" / "generation.json").read_text())
        assert (gen["model"]["unet"] or "").endswith(f"train/{model}/final/unet") == (model != base)
    report = (run / "report" / "drawbench" / "report.md").read_text()
    table = report.split("## Table 1", 1)[1].split("\n## ", 1)[0]
    rows = [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == [f"{base} (base)", *METHODS]
    assert "Average" in table and "## VLM judge" in report
    judged = report.split("## VLM judge", 1)[1]
    assert all(m in judged for m in METHODS)
    study = json.loads((run / "review" / "manifest.json").read_text())["extra"]
    assert study["systems"] == [METHODS[0], base, *METHODS[1:]] and study["comparisons"] == 4 * len(METHODS)
    assert (run / "review" / "tokens.json").is_file()


def test_sdxl_paper_config_runs_as_one_command(weights, tmp_path):
    vlm = PaperVLM()
    with ScriptedServer(vlm) as srv:
        args = paper_overrides("sdxl", weights, srv.base_url, tmp_path / "run")
        assert main(["run", "--config", str(CONFIGS / "sdxl_instructengine.yaml"), *args]) == 0
    run = tmp_path / "run"
    _check_chain(run, "sdxl")
    cands = pd.read_parquet(run / "candidates" / "candidates.parquet")
    assert len(cands) == 2 * 2 * len(pd.read_parquet(run / "instructions" / "pairs.parquet"))
    # SDXL draws the candidates (for both setups, as in the paper) and is the model aligned here
    assert json.loads((run / "candidates" / "generator.json").read_text())["generator"]["model"] == str(weights["sdxl"])
    assert json.loads((run / "eval" / "sdxl" / "drawbench" / "generation.json").read_text())["generator"][
        "pipeline_class"] == "StableDiffusionXLPipeline"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {path} appeared")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_sd15_paper_config_killed_mid_way_resumes(weights, tmp_path):
    vlm = PaperVLM()
    run = tmp_path / "run"
    with ScriptedServer(vlm) as srv:
        args = paper_overrides("sd15", weights, srv.base_url, run)
        cmd = [sys.executable, "-m", "instructengine.cli", "run", "--config", str(CONFIGS / "sd15_instructengine.yaml"), *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                            os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # mid-way: while the AGFSync baseline asks the VLM its VQA questions (after candidates, select, judge)
        _wait_for(run / "baselines", proc, timeout=600)
        while vlm.calls.get("vqa_answer_text", 0) < 20 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run / "report").exists(), "the run finished before it was killed"
        text_calls = {k: vlm.calls.get(k, 0) for k in TEXT_SCHEMAS}
        judged = vlm.calls.get("image_judge", 0)
        images = sorted(p.name for p in (run / "candidates" / "images").rglob("*.png"))
        assert images and judged > 0

        assert main(["run", "--config", str(CONFIGS / "sd15_instructengine.yaml"), *args]) == 0
    # the resumed run asked no text-stage or image-judge question again and drew no candidate again
    assert {k: vlm.calls.get(k, 0) for k in TEXT_SCHEMAS} == text_calls
    assert vlm.calls.get("image_judge", 0) == judged
    assert sorted(p.name for p in (run / "candidates" / "images").rglob("*.png")) == images
    man = json.loads((run / "candidates" / "manifest.json").read_text())
    assert man["extra"]["generated_this_run"] == 0
    assert json.loads((run / "candidates" / "generator.json").read_text())["generator"]["model"] == str(weights["sdxl"])
    _check_chain(run, "sd15")
