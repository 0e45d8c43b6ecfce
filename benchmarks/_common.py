"""Shared parts of the benchmarks: interleaved timing, a short table, the JSON result, the machine.

Every benchmark measures its variants side by side in the same run, interleaved round by round (so
background load on a shared machine hits all of them alike), prints a short table and returns (and
with ``--out`` writes) one JSON dict whose ``machine`` entry says where and when it was measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where and when: host, CPU count, torch threads and version, device name, UTC time."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if device.startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed rounds, then ``rounds`` timed ones, the
    functions called in turn within every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def table(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``rows`` (dicts) with these columns."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [title, line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def finish(result: dict[str, Any], out: str | Path | None, text: str, quiet: bool = False) -> dict[str, Any]:
    """Print the table (unless ``quiet``), write the JSON to ``out`` (if given) and return ``result``."""
    if not quiet:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
