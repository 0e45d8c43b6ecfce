"""SIGKILL in the middle of each text stage, then re-run: same artifacts as an uninterrupted run,
and no request answered before the kill is sent again (the local server counts them)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from text_stage_helpers import small_config, write_config, artifacts, assert_same_artifacts, counts
from scripted_server import ScriptedServer, request_key
from text_responder import TextStageResponder

from instructengine.llm.cache import ResponseCache
from instructengine.text_pipeline import run_text_stages

# stage -> (its manifest folder, the request kind to watch, how many answers before the kill)
KILL_POINTS = {
    "taxonomy": ("taxonomy", "subtopics", 5),
    "entities": ("entities", "confirm_entity", 12),
    "pairs": ("instructions", "contrast_pairs", 30),
}


@pytest.fixture(scope="module")
def slow_server():
    with ScriptedServer(TextStageResponder(), latency_s=0.03) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(slow_server, tmp_path_factory):
    cfg = small_config(tmp_path_factory.mktemp("reference") / "run", slow_server.base_url, llm={"concurrency": 4})
    before = set(slow_server.counts)
    run_text_stages(cfg)
    return cfg, artifacts(cfg.run_dir), set(slow_server.counts) - before


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_sigkill_mid_stage_then_resume(stage, slow_server, reference, tmp_path):
    ref_cfg, ref_artifacts, ref_requests = reference
    folder, kind, answers = KILL_POINTS[stage]
    # a different model name makes every request of this run new to the server (answers do not
    # depend on it, and it appears in no artifact)
    cfg = small_config(tmp_path / "run", slow_server.base_url, llm={"concurrency": 4, "model": f"scripted-{stage}"})
    path = write_config(cfg, tmp_path / "c.yaml")
    seen_before = slow_server.answered_by_schema()[kind]
    log_start = len(slow_server.log)
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructengine.pipeline_cli", "text", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while slow_server.answered_by_schema()[kind] - seen_before < answers:
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stage_dir = Path(cfg.run_dir) / folder
    assert not (stage_dir / "manifest.json").exists(), "the kill came after the stage finished"

    # what was answered (and cached) before the kill, as the server identifies requests
    cache = ResponseCache(Path(cfg.run_dir) / "llm_cache.sqlite")
    answered_before_kill = {request_key(body) for body in cache.requests()}
    cache.close()
    assert answered_before_kill
    counts_at_kill = dict(slow_server.counts)
    log_at_kill = len(slow_server.log)

    run_text_stages(cfg)

    repeated = {k for k in answered_before_kill if slow_server.counts[k] != counts_at_kill.get(k, 0)}
    assert repeated == set(), f"{len(repeated)} requests answered before the kill were sent again"
    # same artifacts as the uninterrupted run (the model name is not part of any artifact)
    assert_same_artifacts(ref_artifacts, artifacts(cfg.run_dir))
    for name in ("taxonomy", "entities", "instructions"):
        assert counts(cfg.run_dir, name) == counts(ref_cfg.run_dir, name)
    # together, the killed run and the resumed one asked as many distinct requests as the
    # reference run, and repeated only what was in flight at the kill (at most `concurrency`)
    log = slow_server.log[log_start:]
    asked = {e["key"] for e in log}
    assert len(asked) == len(ref_requests)
    assert len(log) - len(asked) <= cfg.llm.concurrency

    # the manifests count what was paid over both runs, the killed one included
    schemas = {"taxonomy": ["themes", "subtopics"], "entities": ["entities", "confirm_entity"], "instructions": ["contrast_pairs"]}
    for name, kinds in schemas.items():
        total = json.loads((Path(cfg.run_dir) / name / "manifest.json").read_text())["extra"]["llm_usage_all_runs"]
        seen = [e for e in log if e["schema"] in kinds]
        before = {e["key"] for e in slow_server.log[log_start:log_at_kill] if e["schema"] in kinds}
        after = {e["key"] for e in slow_server.log[log_at_kill:] if e["schema"] in kinds}
        # an attempt is noted just before it is sent: a kill in between notes one the server never saw
        assert len(seen) <= total["http_requests"] <= len(seen) + cfg.llm.concurrency, name
        assert total["runs"] == (2 if after and before else 1), name
        assert len(before & after) <= total["requests_repeated_across_runs"] <= len(before & after) + cfg.llm.concurrency
