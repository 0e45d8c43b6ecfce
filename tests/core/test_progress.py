"""The progress convention: a tqdm bar on a terminal, periodic plain lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from instructengine import progress as progress_module
from instructengine.progress import Progress, format_duration, is_quiet, progress_mode, set_quiet, track


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _loud_environment(monkeypatch):
    """CI services set CI; these tests choose the environment themselves."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("INSTRUCTENGINE_QUIET", raising=False)
    monkeypatch.delenv("INSTRUCTENGINE_PROGRESS_INTERVAL", raising=False)
    set_quiet(None)
    yield
    set_quiet(None)


def test_format_duration_by_hand():
    assert [format_duration(s) for s in (0, 4.4, 59, 60, 90, 3599, 3600, 7500)] == \
        ["0s", "4s", "59s", "1m00s", "1m30s", "59m59s", "1h00m", "2h05m"]


def test_plain_lines_on_a_stream_that_is_not_a_terminal(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = Progress("candidates", total=400, unit="call", stream=out, interval=30)
    assert bar.mode == "lines"
    clock[0] = 110.0
    bar.update(100)  # 10 s after the start: under the interval, no line yet
    assert out.getvalue() == ""
    clock[0] = 140.0
    bar.update(20, images=960)  # 120 calls in 40 s = 3 call/s; 280 left -> 93 s
    assert out.getvalue() == "candidates: 120/400 (30%) 3 call/s ETA 1m33s images=960\n"
    clock[0] = 150.0
    bar.update(10)  # 10 s after the last line: none
    assert out.getvalue().count("\n") == 1
    clock[0] = 200.0
    bar.update(270, images=3200)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "candidates: 400/400 (100%) 4 call/s in 1m40s images=3200"
    bar.close()  # a second close writes nothing
    assert out.getvalue().splitlines() == lines


def test_resumed_work_is_not_counted_in_the_rate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = Progress("train cv_dpo", total=10, unit="step", initial=6, stream=out, interval=0)
    clock[0] = 4.0
    bar.update(1, loss=0.6931471805599453, acc=0.5)  # 1 step in 4 s: 4 s/step, 3 left -> 12 s
    assert out.getvalue() == "train cv_dpo: 7/10 (70%) 4 s/step ETA 12s loss=0.6931 acc=0.5\n"


def test_unknown_total_and_nothing_done():
    out = io.StringIO()
    with Progress("judge", stream=out, interval=0) as bar:
        bar.update(3)
    assert out.getvalue().splitlines()[0].startswith("judge: 3 it ")
    out = io.StringIO()
    with Progress("score", total=5, stream=out, interval=0):
        pass  # nothing counted: no closing line (a step with no work left says nothing)
    assert out.getvalue() == ""


def test_terminal_gets_a_tqdm_bar_with_rate_eta_and_stats():
    out = TTYStream()
    with Progress("train cv_dpo", total=4, unit="step", stream=out) as bar:
        assert bar.mode == "bar"
        for _ in range(4):
            time.sleep(0.01)
            bar.update(1, loss=0.69, acc=0.75)
    text = out.getvalue()
    assert "\r" in text  # redrawn in place
    last = text.split("\r")[-1]
    assert re.search(r"train cv_dpo: 100%\|.*\| 4/4 \[\d\d:\d\d<00:00, +[\d.]+ ?(step/s|s/step), loss=0.69, acc=0.75\]",
                     last), last


def test_quiet_in_every_way(monkeypatch):
    out = TTYStream()
    with Progress("x", total=3, stream=out, quiet=True) as bar:
        bar.update(3)
        bar.write("hello")
    assert out.getvalue() == "" and bar.mode == "off"
    assert progress_mode(io.StringIO()) == "lines"
    monkeypatch.setenv("CI", "true")
    assert is_quiet() and progress_mode(TTYStream()) == "off"
    assert progress_mode(TTYStream(), quiet=False) == "bar"  # an explicit choice wins over the environment
    monkeypatch.setenv("CI", "false")
    assert not is_quiet()
    monkeypatch.setenv("INSTRUCTENGINE_QUIET", "1")
    assert is_quiet()
    set_quiet(False)  # the CLI flag wins over the environment
    assert not is_quiet()
    set_quiet(True)
    monkeypatch.delenv("INSTRUCTENGINE_QUIET")
    out = io.StringIO()
    list(track(range(3), "quiet", stream=out, interval=0))
    assert out.getvalue() == ""
    out = io.StringIO()
    with Progress("off", total=2, stream=out, quiet=False, disable=True, interval=0) as bar:  # another process
        bar.update(2)
    assert out.getvalue() == ""


def test_track_yields_every_item_and_reports():
    out = io.StringIO()
    assert list(track(iter([1, 2, 3]), "items", total=3, stream=out, interval=0)) == [1, 2, 3]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("items: 1/3 (33%)") and lines[-1].startswith("items: 3/3 (100%)")
    assert " in " in lines[-1]


SCRIPT = """
import time
from instructengine.progress import Progress
with Progress("pty", total=3, unit="call") as bar:
    for _ in range(3):
        time.sleep(0.02)
        bar.update(1, images=8)
"""


def _run_on_pty(env: dict[str, str]) -> str:
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=slave, env=env, timeout=120)
        assert proc.returncode == 0
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the slave side is closed and drained
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_a_real_pseudo_terminal_gets_the_bar_and_ci_silences_it():
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "INSTRUCTENGINE_QUIET")}
    shown = _run_on_pty(env)
    assert "pty: 100%" in shown and "3/3" in shown and "images=8" in shown
    assert _run_on_pty({**env, "CI": "true"}) == ""
    assert _run_on_pty({**env, "INSTRUCTENGINE_QUIET": "1"}) == ""
