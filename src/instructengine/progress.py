"""One progress convention for every long step (candidates, scoring, judge, training, evaluation, ablation arms).

``with Progress("candidates", total=len(calls), unit="call") as bar: ... bar.update(1, images=n)``
shows, on the stream (standard error by default):

* a **tqdm bar** when the stream is a terminal (count, percentage, rate, elapsed and ETA, and the
  step's own numbers after a comma: ``loss=0.693, acc=0.50``);
* a **plain line** every ``interval`` seconds (default 30, ``INSTRUCTENGINE_PROGRESS_INTERVAL``) when
  it is not (a log file, a pipe, a CI log), and one closing line::

      candidates: 120/400 (30%) 3.1 call/s ETA 1m30s images=960
      candidates: 400/400 (100%) 3.0 call/s in 2m13s images=3200

* **nothing** when quiet: ``quiet=True``, :func:`set_quiet` (the CLIs' ``--quiet``), the environment
  variable ``INSTRUCTENGINE_QUIET`` (any value but ``0``/``false``/empty) or ``CI`` (set by CI
  services), in that order of precedence; and on processes other than the main one (``disable=True``).

Counts, rate and ETA are measured from ``initial`` (work already done when the step resumed), so a
resumed step's ETA is not flattered by the work it skipped. Progress output never changes what a
step computes or writes.
"""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

__all__ = ["ENV_INTERVAL", "ENV_QUIET", "Progress", "format_duration", "is_quiet", "progress_mode", "quiet_option",
           "set_quiet", "track"]

ENV_QUIET = "INSTRUCTENGINE_QUIET"
ENV_INTERVAL = "INSTRUCTENGINE_PROGRESS_INTERVAL"
#: seconds between two plain lines on a stream that is not a terminal
DEFAULT_INTERVAL = 30.0
_FALSE = ("", "0", "false", "no", "off")

_quiet: bool | None = None  # set by set_quiet (the CLIs' --quiet); None: from the environment

T = TypeVar("T")


def set_quiet(value: bool | None) -> None:
    """Silence (True) or allow (False) progress output process-wide; None: back to the environment."""
    global _quiet
    _quiet = value


def _quiet_flag(value: bool) -> bool:
    set_quiet(True if value else None)  # not given: back to the environment (in-process CLI calls)
    if value:
        # the hub libraries' own bars (loading / writing weights): huggingface_hub and transformers
        # read this at import; transformers, if imported already, is told directly
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    return value


def quiet_option() -> Any:
    """The CLIs' ``--quiet/-q`` typer option (sets :func:`set_quiet` as soon as it is parsed)."""
    import typer

    return typer.Option(False, "--quiet", "-q", callback=_quiet_flag, is_eager=True,
                        help="No progress bars or lines (also: INSTRUCTENGINE_QUIET=1, or CI set).")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE


def is_quiet() -> bool:
    """True when progress output is off: :func:`set_quiet`, else ``INSTRUCTENGINE_QUIET``, else ``CI``."""
    if _quiet is not None:
        return _quiet
    return _env_true(ENV_QUIET) or _env_true("CI")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_size(stream: Any) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0, 0  # a stream without a file descriptor that says it is a terminal


def progress_mode(stream: Any = None, quiet: bool | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for ``stream`` (default: standard error)."""
    if quiet if quiet is not None else is_quiet():
        return "off"
    return "bar" if _isatty(stream if stream is not None else sys.stderr) else "lines"


def format_duration(seconds: float) -> str:
    """``45s``, ``1m30s``, ``2h05m`` (whole seconds; minutes and hours as they grow)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _format_stat(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress of one long step: a tqdm bar on a terminal, periodic plain lines elsewhere, or nothing.

    Args:
        name: what runs, e.g. ``"candidates"`` or ``"train cv_dpo"`` (the line's prefix).
        total: how many units the step has (None: unknown; no percentage or ETA).
        unit: what a unit is (``it``, ``call``, ``image``, ``step``).
        initial: units already done when the step starts (a resumed step).
        stream: where to write (default: standard error at creation time).
        quiet: force quiet (True) or not (False); None: :func:`is_quiet`.
        interval: seconds between plain lines (default: ``INSTRUCTENGINE_PROGRESS_INTERVAL`` or 30).
        disable: no output at all (e.g. ``not accelerator.is_main_process``).
    """

    def __init__(self, name: str, total: int | None = None, *, unit: str = "it", initial: int = 0,
                 stream: TextIO | None = None, quiet: bool | None = None, interval: float | None = None,
                 disable: bool = False):
        self.name = name
        self.total = total
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.stats: dict[str, Any] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.mode = "off" if disable else progress_mode(self.stream, quiet)
        if interval is None:
            try:
                interval = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
            except ValueError:
                interval = DEFAULT_INTERVAL
        self.interval = max(0.0, interval)
        self.start = time.monotonic()
        self._last_line = self.start
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            # leave=None: the outermost bar stays on screen, nested ones (a training inside an
            # ablation arm) are cleared when they finish
            # a terminal that reports no size (a fresh pseudo-terminal) would get no bar at all from tqdm
            columns, lines = _terminal_size(self.stream)
            self._bar = tqdm(total=total, initial=initial, desc=name, unit=unit, file=self.stream, leave=None,
                             dynamic_ncols=columns > 0, ncols=None if columns > 0 else 100,
                             nrows=None if lines > 0 else 40, mininterval=0.5, smoothing=0.1)

    # --- updates ---------------------------------------------------------------------------
    def update(self, n: int = 1, **stats: Any) -> None:
        """``n`` more units done; ``stats`` (e.g. ``loss=0.69``) replace the shown numbers of those names."""
        self.n += n
        if stats:
            self.stats.update(stats)
        if self._bar is not None:
            if stats:
                self._bar.set_postfix_str(self._stats_text(", "), refresh=False)
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self._last_line >= self.interval:
                self._last_line = now
                self._write(self.line())

    def set_stats(self, **stats: Any) -> None:
        """Change the shown numbers without counting a unit."""
        self.update(0, **stats)

    # --- text --------------------------------------------------------------------------------
    def _stats_text(self, sep: str = " ") -> str:
        return sep.join(f"{k}={_format_stat(v)}" for k, v in self.stats.items())

    def rate(self) -> float | None:
        """Units per second since the start (resumed units not counted); None before any."""
        done = self.n - self.initial
        elapsed = time.monotonic() - self.start
        return done / elapsed if done > 0 and elapsed > 0 else None

    def line(self, final: bool = False) -> str:
        """The plain line: ``name: n/total (p%) rate ETA t stats`` (closing line: ``in t`` for the ETA)."""
        parts = [f"{self.name}:"]
        if self.total:
            parts.append(f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self.n} {self.unit}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{self.unit}")
        if final:
            parts.append(f"in {format_duration(time.monotonic() - self.start)}")
        elif rate is not None and self.total:
            parts.append(f"ETA {format_duration(max(0, self.total - self.n) / rate)}")
        if self.stats:
            parts.append(self._stats_text())
        return " ".join(parts)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            self.mode = "off"

    def write(self, text: str) -> None:
        """Print a message without breaking the bar (``tqdm.write`` on a terminal); nothing when quiet."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        elif self.mode == "lines":
            self._write(text)

    # --- end ---------------------------------------------------------------------------------
    def close(self) -> None:
        """End the bar, or write the closing plain line (only if some unit was counted)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and self.n > self.initial:
            self._write(self.line(final=True))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(iterable: Iterable[T], name: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Iterate ``iterable`` with a :class:`Progress` (``total`` defaults to ``len(iterable)``)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(name, total, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update(1)
