"""Transient drops (server down, 429, 5xx, timeouts) are retried by the next plain run; permanent
ones (invalid answers) stay dropped and counted unless retry_dropped; failed entity confirmations
are retried like any other drop."""

import socket

import pandas as pd
import pytest
from scripted_server import PersistentFaults, ScriptedServer
from text_responder import TextStageResponder
from text_stage_helpers import artifacts, assert_same_artifacts, counts, small_config

from instructengine.text_pipeline import EmptyStageError, run_text_stages


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with ScriptedServer(TextStageResponder()) as srv:
        cfg = small_config(tmp_path_factory.mktemp("ref") / "run", srv.base_url)
        run_text_stages(cfg)
    return cfg, artifacts(cfg.run_dir)


def test_after_an_outage_a_plain_rerun_recovers(tmp_path, reference):
    run = tmp_path / "run"
    down = small_config(run, f"http://127.0.0.1:{_closed_port()}/v1", llm={"max_connect_retries": 0})
    with pytest.raises(EmptyStageError, match="retried by the next run"):
        run_text_stages(down)
    with ScriptedServer(TextStageResponder()) as srv:
        up = small_config(run, srv.base_url)  # the same settings, the server back (another port)
        run_text_stages(up)
        assert srv.total > 0
    assert_same_artifacts(reference[1], artifacts(run))


def test_failed_confirmations_are_retried_by_the_next_run(tmp_path, reference):
    run = tmp_path / "run"
    flaky = PersistentFaults(0.4, ("http_503",), seed=4, only=("confirm_entity",))
    with ScriptedServer(TextStageResponder(), faults=flaky) as srv:
        run_text_stages(small_config(run, srv.base_url), stages=["taxonomy", "entities"])
    assert flaky.poisoned
    first = counts(run, "entities")
    assert first["dropped"].get("confirm:unavailable:http_503", 0) == len(flaky.poisoned)
    with ScriptedServer(TextStageResponder()) as srv:
        run_text_stages(small_config(run, srv.base_url))
        assert {e["schema"] for e in srv.log} == {"confirm_entity", "contrast_pairs"}  # only what failed, then pairs
    assert_same_artifacts(reference[1], artifacts(run))
    assert counts(run, "entities") == counts(reference[0].run_dir, "entities")


def test_permanent_drops_stay_dropped_unless_retry_dropped(tmp_path, reference):
    run = tmp_path / "run"
    bad = PersistentFaults(0.3, ("malformed",), seed=5, only=("contrast_pairs",))
    with ScriptedServer(TextStageResponder(), faults=bad) as srv:
        cfg = small_config(run, srv.base_url, llm={"max_invalid_retries": 0})
        run_text_stages(cfg)
    dropped = counts(run, "instructions")["dropped"]["request:pairs:invalid_answer:not_json"]
    assert dropped == len(bad.poisoned) > 0
    with ScriptedServer(TextStageResponder()) as srv:
        cfg = small_config(run, srv.base_url, llm={"max_invalid_retries": 0})
        run_text_stages(cfg)
        assert srv.total == 0  # permanent: not asked again, still counted
        assert counts(run, "instructions")["dropped"]["request:pairs:invalid_answer:not_json"] == dropped
        run_text_stages(small_config(run, srv.base_url, llm={"max_invalid_retries": 0}, pairs={"retry_dropped": True}))
        assert srv.total == dropped
    pd.testing.assert_frame_equal(artifacts(run)["pairs"], reference[1]["pairs"])
