"""Typed configs: YAML files + dotted command-line overrides, validated by pydantic.

Every config class derives from :class:`Config`, which forbids unknown keys (a typo is an error,
not a silently ignored setting). :func:`load_config` reads a YAML file, applies overrides such as
``train.lr=1e-5`` and validates the result; a bad value raises :class:`ConfigError` naming the
field, the value and what is allowed. :func:`save_resolved` writes the validated config beside a
run's outputs, and :func:`config_hash` gives a stable short hash of it for manifests.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "config_hash",
    "load_config",
    "parse_override",
    "save_resolved",
]

C = TypeVar("C", bound="Config")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Config(BaseModel):
    """Base of every config: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config could not be read or did not validate; the message says which field and why."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], value), the value parsed as YAML.

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. train.lr=1e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; expected e.g. train.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-5" (no dot) as a string
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override applied (nested dicts created as needed)."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(path[:-1])!r} is a value ({child!r}), not a section"
                )
            node = child
        node[path[-1]] = value
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (value {value!r}); check the spelling against the config class")
        elif e["type"] == "missing":
            lines.append(f"  {loc}: required field is missing")
        else:
            lines.append(f"  {loc} = {value!r}: {e['msg']}")
    return "\n".join(lines)


def validate_config(cls: type[C], data: dict[str, Any], source: str = "<dict>") -> C:
    """Validate plain data into ``cls``, turning pydantic's error into a :class:`ConfigError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides.

    Raises:
        ConfigError: missing file, a YAML syntax error or non-UTF-8 bytes (with the line), YAML that
            is not a mapping, or a value that fails validation.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {str(p)!r}: byte {err.start} is not UTF-8; save it as UTF-8") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {str(p)!r}:{where}: YAML syntax error: {what}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a YAML mapping, got {type(loaded).__name__}")
        data = loaded
        source = str(p)
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides " + " ".join(overrides)
    return validate_config(cls, data, source)


def config_hash(cfg: BaseModel) -> str:
    """A short, stable hash of a config's resolved values (key order does not matter)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_resolved(cfg: BaseModel, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    from instructengine.runs import atomic_write_text

    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return atomic_write_text(Path(path), text)
