"""The VLM judge through the project's chat client, against a real local HTTP server that looks at
the image it is sent: agreement with the oracle, cached re-runs, faults counted by reason, fail-fast
on permanent errors, and SIGKILL mid-stage without repeated requests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from images_helpers import copy_text_run, make_config, write_config
from judge_responder import OracleVLM
from scripted_server import PersistentFaults, ScriptedServer, request_key, transient_faults

from instructengine.images.judge import run_judge
from instructengine.images.pipeline import run_image_stages
from instructengine.llm.cache import ResponseCache
from instructengine.llm.errors import PermanentLLMError

HERE = Path(__file__).resolve().parent
MISTAKES = {"kind": "images_helpers:make_mistake_generator", "options": {"every": 2}}


def _llm(server, **kw):
    return {"base_url": server.base_url, "model": kw.pop("model", "scripted-vlm"), "api_key_env": "IE_TEST_KEY_UNSET",
            "concurrency": 8, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3, "timeout_s": 5.0, **kw}


@pytest.fixture(scope="module")
def selected_run(shapes_text_run, tmp_path_factory):
    """A run folder with candidates (half of them wrong) and best-of-N by a scorer that cannot tell."""
    run = copy_text_run(shapes_text_run, tmp_path_factory.mktemp("vlm") / "run")
    cfg = make_config(run, generator=MISTAKES, candidates={"n_candidates": 2, "max_pairs": 40},
                      select={"scorer": {"kind": "blip", "name": "tests_constant"}})  # never built: run_select gets the object
    from instructengine.images.candidates import run_candidates
    from instructengine.images.select import run_select

    run_candidates(cfg)
    run_select(cfg, scorer=ConstantScorer())
    oracle = make_config(run, judge={"kind": "shapes_oracle"})
    run_judge(oracle)
    truth = pd.read_parquet(run / "judge" / "judged.parquet")
    return run, truth


class ConstantScorer:
    name = "tests_constant"

    def score(self, images, prompts):
        import numpy as np

        return np.zeros(len(images))


def _fresh(selected_run, tmp_path) -> Path:
    import shutil

    src, _ = selected_run
    dst = tmp_path / "run"
    for stage in ("taxonomy", "entities", "instructions", "candidates", "select"):
        shutil.copytree(src / stage, dst / stage)
    return dst


def test_vlm_judge_agrees_with_the_oracle_and_reruns_ask_nothing(selected_run, tmp_path):
    _, truth = selected_run
    run = _fresh(selected_run, tmp_path)
    with ScriptedServer(OracleVLM()) as srv:
        cfg = make_config(run, judge={"kind": "vlm", "llm": _llm(srv), "chunk_size": 16})
        m = run_judge(cfg)
        judged = pd.read_parquet(run / "judge" / "judged.parquet")
        assert judged["keep"].tolist() == truth["keep"].tolist()
        assert 0 < judged["keep"].sum() < len(judged)
        assert set(judged.loc[~judged["keep"], "reason"]) == {"vlm:mismatch"}
        assert judged.loc[~judged["keep"], "detail"].str.startswith("wrong ").all()
        assert m.dropped == {"vlm:mismatch": int((~judged["keep"]).sum())}
        assert srv.total == len(judged) == m.extra["llm_usage"]["http_requests"]
        assert m.extra["llm_usage"]["prompt_tokens"] > 0 and m.extra["llm"]["model"] == "scripted-vlm"
        # re-run: answered from the ledger; without the ledger: from the SQLite cache; no request either way
        srv.reset_counts()
        run_judge(cfg)
        for ledger in (run / "judge").glob("progress-*.jsonl"):
            ledger.unlink()
        again = run_judge(cfg)
        assert srv.total == 0 and again.extra["llm_usage"]["cache_hits"] == len(judged)
        assert pd.read_parquet(run / "judge" / "judged.parquet").equals(judged)


def test_faults_are_retried_or_dropped_with_their_reason(selected_run, tmp_path):
    _, truth = selected_run
    run = _fresh(selected_run, tmp_path)
    poison = PersistentFaults(0.2, ("http_500", "malformed"), seed=3, only=("image_judge",))
    plan = lambda body, nth: poison(body, nth) or transient_faults(0.2, seed=5)(body, nth)  # noqa: E731
    with ScriptedServer(OracleVLM(), faults=plan) as srv:
        cfg = make_config(run, judge={"kind": "vlm", "llm": _llm(srv, max_invalid_retries=1)})
        m = run_judge(cfg)
    judged = pd.read_parquet(run / "judge" / "judged.parquet")
    errors = judged[judged["reason"].str.startswith("judge_error")]
    assert len(errors) == len(poison.poisoned) > 0
    assert set(errors["reason"]) <= {"judge_error:unavailable:http_500", "judge_error:invalid_answer:not_json"}
    ok = judged[~judged["reason"].str.startswith("judge_error")]
    assert ok["keep"].tolist() == truth.set_index("instruction_id").loc[ok["instruction_id"], "keep"].tolist()
    assert sum(m.dropped.values()) == (~judged["keep"]).sum() and m.extra["llm_usage"]["retries"]
    # the dataset counts the pairs lost to judge errors under their own reason
    from instructengine.images.dataset import run_dataset

    d = run_dataset(cfg)
    assert sum(v for k, v in d.dropped.items() if k.startswith("judge_error:")) >= 1
    assert d.count_in == d.count_out + sum(d.dropped.values())


def test_a_permanent_error_aborts_with_a_clear_message(selected_run, tmp_path):
    run = _fresh(selected_run, tmp_path)
    with ScriptedServer(OracleVLM(), api_key="right-key") as srv:
        os.environ["IE_TEST_WRONG_KEY"] = "wrong-key"
        try:
            cfg = make_config(run, judge={"kind": "vlm", "llm": _llm(srv, api_key_env="IE_TEST_WRONG_KEY")})
            with pytest.raises(PermanentLLMError, match="(?s)HTTP 401.*IE_TEST_WRONG_KEY is set"):
                run_judge(cfg)
        finally:
            del os.environ["IE_TEST_WRONG_KEY"]
    assert not (run / "judge" / "manifest.json").exists()


def test_top_level_llm_is_used_when_the_judge_has_none(selected_run, tmp_path):
    run = _fresh(selected_run, tmp_path)
    with ScriptedServer(OracleVLM()) as srv:
        cfg = make_config(run, llm=_llm(srv, model="top-level-model"), judge={"kind": "vlm"})
        m = run_judge(cfg)
        assert m.extra["llm"]["model"] == "top-level-model" and srv.total == m.count_in


def test_judge_temperature_defaults_to_zero(selected_run, tmp_path):
    run = _fresh(selected_run, tmp_path)
    temps = []
    with ScriptedServer(OracleVLM(), faults=lambda body, nth: temps.append(body["temperature"])) as srv:
        # the top-level llm (temperature 1.0 for the text stages) is inherited: the judge still uses 0
        run_judge(make_config(run, llm=_llm(srv), judge={"kind": "vlm"}))
        assert set(temps) == {0.0}
        temps.clear()
        # a judge llm section without a temperature: 0 too; with one: that one
        run_judge(make_config(run, judge={"kind": "vlm", "llm": _llm(srv, model="m2")}))
        assert set(temps) == {0.0}
        temps.clear()
        run_judge(make_config(run, judge={"kind": "vlm", "llm": _llm(srv, model="m3", temperature=0.7)}))
        assert set(temps) == {0.7}
    # the resolved config saved beside the judge's outputs says what ran, and reloads to the same
    from instructengine.config import load_config
    from instructengine.images.config import DataPipelineConfig, JudgeConfig

    saved = load_config(JudgeConfig, run / "judge" / "config.yaml")
    assert saved.llm.temperature == 0.7
    cfg = make_config(run, llm=_llm(srv, temperature=1.0), judge={"kind": "vlm", "llm": _llm(srv, model="m2")})
    assert cfg.judge.llm.temperature == 0.0 and cfg.llm.temperature == 1.0
    again = DataPipelineConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.judge_llm().temperature == 0.0
    inherited = make_config(run, llm=_llm(srv, temperature=1.0), judge={"kind": "vlm"})
    assert inherited.judge_llm().temperature == 0.0 and inherited.judge.llm is None


def test_vlm_down_pipeline_fails_naming_the_judge_then_recovers(selected_run, tmp_path, capsys):
    import socket

    from images_helpers import write_config

    from instructengine.images.cli import main

    run = _fresh(selected_run, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {"base_url": f"http://127.0.0.1:{port}/v1", "model": "scripted-vlm", "api_key_env": "IE_TEST_KEY_UNSET",
            "max_connect_retries": 0}
    path = write_config(make_config(run, judge={"kind": "vlm", "llm": down}), tmp_path / "down.yaml")
    assert main(["judge", "--config", str(path)]) == 0  # every image judge_error: counted, not fatal yet
    assert main(["dataset", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stage 'dataset' has no sample" in err and "stage 'judge' kept none" in err
    assert "judge_error:unavailable:connection" in err and "Traceback" not in err
    assert not (run / "images" / "samples.parquet").exists()
    with ScriptedServer(OracleVLM()) as srv:  # the server is back: a plain re-run judges them again
        path = write_config(make_config(run, judge={"kind": "vlm", "llm": {**down, "base_url": srv.base_url}}), tmp_path / "up.yaml")
        assert main(["judge", "--config", str(path)]) == 0 and srv.total > 0
        assert main(["dataset", "--config", str(path)]) == 0
    assert len(pd.read_parquet(run / "images" / "samples.parquet")) > 0


def test_sigkill_mid_judge_then_rerun_repeats_no_answered_request(selected_run, tmp_path):
    _, truth = selected_run
    run = _fresh(selected_run, tmp_path)
    with ScriptedServer(OracleVLM(), latency_s=0.05) as srv:
        cfg = make_config(run, judge={"kind": "vlm", "llm": _llm(srv, concurrency=2), "concurrency": 2, "chunk_size": 8})
        path = write_config(cfg, tmp_path / "c.yaml")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, "-m", "instructengine.images.cli", "judge", "--config", str(path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while len(srv.answered) < 20:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the run never reached the kill point"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (run / "judge" / "manifest.json").exists()
        cache = ResponseCache(run / "judge" / "llm_cache.sqlite")
        answered = {request_key(body) for body in cache.requests()}
        cache.close()
        assert len(answered) >= 20 - 2  # an answer in flight at the kill may not be cached yet
        counts_at_kill = dict(srv.counts)
        run_judge(cfg)
        repeated = {k for k in answered if srv.counts[k] != counts_at_kill.get(k, 0)}
        assert repeated == set()
    judged = pd.read_parquet(run / "judge" / "judged.parquet")
    assert judged["keep"].tolist() == truth["keep"].tolist()


def test_whole_image_pipeline_with_the_vlm_judge(selected_run, tmp_path):
    run = _fresh(selected_run, tmp_path)
    with ScriptedServer(OracleVLM()) as srv:
        cfg = make_config(run, judge={"kind": "vlm", "llm": _llm(srv)})
        m = run_image_stages(cfg, stages=("judge", "dataset"), log=lambda s: None)
    assert m["dataset"].count_out > 0
    assert m["dataset"].count_in == m["dataset"].count_out + sum(m["dataset"].dropped.values())
