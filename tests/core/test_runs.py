"""Run directories: atomic writes, the resume ledger, manifests."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from instructengine.config import Config
from instructengine.runs import Ledger, StageDir, atomic_write_bytes, atomic_write_json, atomic_write_parquet


class Tiny(Config):
    a: int = 1


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x" / "a.json"
    atomic_write_json(p, {"v": 1})
    atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert [f.name for f in p.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.parquet"
    atomic_write_parquet(p, pd.DataFrame({"x": [1, 2]}))

    class Boom:
        def __len__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        atomic_write_parquet(p, Boom())
    assert pd.read_parquet(p).x.tolist() == [1, 2]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.parquet"]


def test_sigkill_during_write_never_leaves_a_partial_target(tmp_path):
    target = tmp_path / "big.bin"
    atomic_write_bytes(target, b"old")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from instructengine.runs import atomic_write_bytes\n"
        f"atomic_write_bytes(Path({str(target)!r}), b'x' * 200_000_000)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    import time

    time.sleep(0.8)
    proc.kill()
    proc.wait()
    data = target.read_bytes()
    assert data in (b"old", b"x" * 200_000_000)


def test_ledger_resumes_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    with Ledger(path) as led:
        led.add("a", n=1)
        led.add("b", n=2)
    with open(path, "a") as f:
        f.write('{"key": "c", "n"')  # a crash in the middle of a write
    led = Ledger(path)
    assert "a" in led and "b" in led and "c" not in led
    assert led.get("b")["n"] == 2 and len(led) == 2
    led.add("c", n=3)
    led.close()
    assert len(Ledger(path)) == 3


def test_stage_manifest_counts_config_and_versions(tmp_path):
    stage = StageDir(tmp_path, "entities")
    m = stage.new_manifest(Tiny(a=3))
    assert (stage.root / "config.yaml").read_text().strip() == "a: 3"
    m.count_in, m.count_out = 10, 7
    m.drop("off_topic", 2)
    m.drop("rejected")
    with m.timed("work"):
        pass
    assert not stage.is_complete()
    stage.write_manifest(m)
    d = json.loads(stage.manifest_path.read_text())
    assert d["counts"] == {"in": 10, "out": 7, "dropped": {"off_topic": 2, "rejected": 1}, "dropped_total": 3}
    assert d["config_hash"] and "torch" in d["versions"] and "work" in d["timings_s"]
    assert stage.is_complete(d["config_hash"]) and not stage.is_complete("other")
