"""The loopback load test (benchmarks/review_load.py): votes are neither lost nor doubled."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "review_load.py"


def load_module():
    spec = importlib.util.spec_from_file_location("review_load", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layout_gives_every_annotator_the_same_number_of_tasks():
    mod = load_module()
    for a, v in ((20, 50), (4, 10), (7, 3), (1, 5)):
        per_item, comps = mod._layout(a, v)
        assert 1 <= per_item <= min(a, 10) and per_item * comps == a * v


def run_and_check(annotators, votes, tmp_path):
    report = load_module().run_load(annotators, votes, dup_rate=0.3, work_dir=str(tmp_path))
    assert report["n_errors"] == 0, report["errors"]
    assert report["persisted"] == report["unique_tasks_voted"] == annotators * votes
    assert (report["lost"], report["doubled"], report["altered"]) == (0, 0, 0)
    assert report["per_annotator_min_max"] == [votes, votes]
    assert report["duplicates_sent_and_acknowledged"] > 0
    assert report["vote_latency_ms"]["p95"] > 0 and report["ok"]
    return report


def test_small_concurrent_load_persists_every_vote_once(tmp_path):
    run_and_check(5, 12, tmp_path)


@pytest.mark.slow
def test_issue_load_20_annotators_x_50_votes(tmp_path):
    run_and_check(20, 50, tmp_path)
