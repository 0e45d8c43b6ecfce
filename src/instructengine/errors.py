"""Errors a user can fix, and the one place that turns them into one line on the command line.

* :class:`UsageError` is the base (a mixin beside the builtin base each class keeps, e.g.
  ``class ConfigError(UsageError, ValueError)``) of every error caused by input the user can fix:
  a config value, an input file, a model name, a device. Its message names the setting or file,
  the value and what would be right.
* :func:`loading` turns the ``OSError`` of a model loader (a hub id that cannot be reached, a
  folder without weights) into a :class:`ModelLoadError` naming the config field that gave it.
* :func:`require_device` refuses a CUDA device on a machine without one before any work starts
  (torch would fail later with ``AssertionError: Torch not compiled with CUDA enabled``).
* :class:`App` is the ``typer.Typer`` of every command group: each command it registers runs under
  :func:`reported`, which prints a known error (:func:`is_known`) as ONE line ``error: ...`` on
  stderr and exits 2; an unknown error keeps its traceback. :func:`run_app` is every CLI's
  ``main(argv)``.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import typer

__all__ = [
    "App",
    "DeviceError",
    "ModelFileNotFoundError",
    "ModelLoadError",
    "UsageError",
    "is_known",
    "loading",
    "one_line",
    "reported",
    "require_device",
    "require_devices",
    "run_app",
]

#: exit code of a command that stopped on a known error (click uses 2 for usage errors too)
EXIT_USAGE = 2


class UsageError(Exception):
    """Base of errors caused by input the user can fix; the command line shows their message alone."""


class ModelLoadError(UsageError, OSError):
    """A model named by a config field could not be loaded (hub unreachable, unknown id, no weights)."""

    def __init__(self, field: str, value: Any, cause: BaseException, hint: str | None = None):
        self.field, self.value, self.cause = field, value, cause
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        if len(first) > 240:
            first = first[:237] + "..."
        hint = hint or (f"set {field} to a local model folder or a Hub id this machine can reach "
                        "(offline: fill the cache under HF_HOME first)")
        super().__init__(f"{field}={str(value)!r} could not be loaded ({type(cause).__name__}: {first}); {hint}")


class ModelFileNotFoundError(ModelLoadError, FileNotFoundError):
    """A model named by a config field lacks a file (a folder without ``model_index.json``, ...)."""


class DeviceError(UsageError, ValueError):
    """A device or dtype setting this machine cannot run."""


@contextlib.contextmanager
def loading(field: str, value: Any, hint: str | None = None) -> Iterator[None]:
    """Run a model loader; its ``OSError`` becomes a :class:`ModelLoadError` naming ``field``.

    Raises:
        ModelLoadError: the loader raised an ``OSError`` (including huggingface_hub's HTTP and
            cache errors, which derive from it) that is not already a :class:`UsageError`.
    """
    try:
        yield
    except UsageError:
        raise
    except OSError as err:
        cls = ModelFileNotFoundError if isinstance(err, FileNotFoundError) else ModelLoadError
        raise cls(field, value, err, hint) from err


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def require_device(field: str, device: Any) -> None:
    """Refuse a CUDA device (``cuda``, ``cuda:1``) when torch sees none; other devices pass.

    Raises:
        DeviceError: ``device`` names CUDA and ``torch.cuda.is_available()`` is False.
    """
    text = str(device) if device is not None else ""
    if not text.startswith("cuda") or cuda_available():
        return
    import torch

    why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA device here"
    raise DeviceError(f"{field}={text!r} needs a CUDA device and {why}; set it to 'cpu' (or run on a GPU machine)")


def require_devices(config: Any, where: str) -> None:
    """:func:`require_device` on every ``device`` field inside a config section (nested sections and
    lists included), each named by its dotted path, e.g. ``baselines.0.scorers.1.device``.

    Raises:
        DeviceError: the first CUDA device found on a machine without one.
    """
    from pydantic import BaseModel

    if isinstance(config, BaseModel):
        for name in type(config).model_fields:
            value = getattr(config, name)
            if name == "device" and isinstance(value, str):
                require_device(f"{where}.device", value)
            else:
                require_devices(value, f"{where}.{name}")
    elif isinstance(config, (list, tuple)):
        for i, item in enumerate(config):
            require_devices(item, f"{where}.{i}")


def _validation_text(err: Exception) -> str:
    from instructengine.config import _format_validation_error

    return _format_validation_error(err, getattr(err, "title", None) or "input")


_PACKAGE = Path(__file__).resolve().parent


def raised_by_the_library(err: BaseException) -> bool:
    """True when ``err`` was raised by a ``raise`` statement in this package (its last traceback
    frame is one of our modules), not by numpy, torch or another library we called."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def is_known(err: BaseException) -> bool:
    """True for the errors the command line reports as one line: a :class:`UsageError`, pydantic's
    ``ValidationError``, a ``FileNotFoundError``, and the ``ValueError`` / ``RuntimeError`` checks of
    this package (their messages are written for the user: "Raises: ValueError naming ..."). The
    same exceptions raised inside another library (a shape mismatch in torch) are unknown."""
    from pydantic import ValidationError

    if isinstance(err, (UsageError, ValidationError, FileNotFoundError)):
        return True
    return isinstance(err, (ValueError, RuntimeError)) and raised_by_the_library(err)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a multi-line message's lines joined by ``; ``)."""
    from pydantic import ValidationError

    text = _validation_text(err) if isinstance(err, ValidationError) else str(err)
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text} ({err.filename})"
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    joined = ""
    for p in parts:  # "invalid config (x):" + "  a: b" reads as "invalid config (x): a: b"
        joined = p if not joined else joined + (" " if joined.endswith(":") else "; ") + p
    return joined or type(err).__name__


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command: a known error is printed as ``error: <one line>`` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:
            if not is_known(err):
                raise
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    wrapper.__instructengine_reported__ = True  # type: ignore[attr-defined]
    return wrapper


class App(typer.Typer):
    """``typer.Typer`` whose commands report known errors as one line (:func:`reported`)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(fn if getattr(fn, "__instructengine_reported__", False) else reported(fn))
            return fn

        return decorator

    def callback(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().callback(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(reported(fn))
            return fn

        return decorator


def run_app(app: typer.Typer, argv: Sequence[str] | None = None) -> int:
    """Run ``app`` in-process with ``argv`` (None: ``sys.argv``) and return the exit code; usage
    errors (a bad option) are shown the way click shows them."""
    try:
        rv = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except typer.Exit as err:
        return int(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 1
    except typer.TyperException as err:  # a usage error (bad option, missing argument): click's message
        show = getattr(err, "show", None)
        show() if callable(show) else typer.echo(f"error: {err.format_message()}", err=True)
        return int(err.exit_code)
    return rv if isinstance(rv, int) else 0
