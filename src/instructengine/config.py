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
from instructengine.errors import UsageError

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "config_hash",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_resolved",
    "validate_config",
]

C = TypeVar("C", bound="Config")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Config(BaseModel):
    """Base of every config: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(UsageError, ValueError):
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


def _entry_key(entry: Any) -> str | None:
    """What names a list entry in an override: its ``name``, else its ``kind`` (a bare string: itself)."""
    if isinstance(entry, dict):
        for key in ("name", "kind"):
            if isinstance(entry.get(key), str):
                return entry[key]
        return None
    return entry if isinstance(entry, str) else None


def _list_index(items: list[Any], part: str, text: str, where: str) -> int:
    """The index of the list entry ``part`` names: an integer index, or an entry's name/kind."""
    if part.lstrip("-").isdigit():
        i = int(part)
        if -len(items) <= i < len(items):
            return i % len(items)
        raise ConfigError(f"override {text!r}: {where!r} has {len(items)} entries; index {i} is out of range")
    names = [_entry_key(e) for e in items]
    hits = [i for i, n in enumerate(names) if n == part]
    if len(hits) == 1:
        return hits[0]
    known = [n for n in names if n is not None]
    if not hits:
        raise ConfigError(f"override {text!r}: {where!r} has no entry {part!r}; name one of {known} or an index "
                          f"0..{len(items) - 1}")
    raise ConfigError(f"override {text!r}: {where!r} has {len(hits)} entries named {part!r}; use an index")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override applied (nested dicts created as needed).

    A list section is entered by index or by an entry's ``name`` (else ``kind``):
    ``baselines.hpsv2.scorers.0.device=cpu`` sets the device of the first scorer of the baseline
    named hpsv2. A bare-string entry (``scorers: [clip]``) becomes ``{kind: clip}`` when a field of
    it is set.

    Raises:
        ConfigError: the override names a list entry that does not exist, or goes through a value.
    """
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node: Any = out
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                i = _list_index(node, part, text, ".".join(path[:depth]))
                if isinstance(node[i], str):
                    node[i] = {"kind": node[i]}
                child = node[i]
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {text!r}: {where!r} is a value ({child!r}), not a section")
            node = child
        last = path[-1]
        if isinstance(node, list):
            i = _list_index(node, last, text, ".".join(path[:-1]))
            node[i] = value
        else:
            node[last] = value
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
        elif e["type"] == "value_error" and isinstance(value, dict):  # a check across fields names them itself
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {msg}" if not e["loc"] else f"  {loc}: {msg}")
        else:
            lines.append(f"  {loc} = {value!r}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate_config(cls: type[C], data: dict[str, Any], source: str = "<dict>") -> C:
    """Validate plain data into ``cls``, turning pydantic's error into a :class:`ConfigError`."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file.

    Raises:
        ConfigError: missing file, YAML syntax error (with its line), or a document that is not a mapping.
    """
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
    return loaded


def _resolve_paths(cls: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file references a config class declares (``config_paths``) relative to ``base``."""
    for dotted in getattr(cls, "config_paths", ()):
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(parts[-1]), str):
            ref = Path(node[parts[-1]]).expanduser()
            if not ref.is_absolute():
                node[parts[-1]] = str((base / ref).resolve())
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides.

    File references that ``cls.config_paths`` lists (e.g. the stage configs a main job names) are
    resolved relative to the YAML file that names them; references given as overrides stay relative
    to the current directory.

    Raises:
        ConfigError: missing file, a YAML syntax error or non-UTF-8 bytes (with the line), YAML that
            is not a mapping, or a value that fails validation.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = _resolve_paths(cls, read_yaml(path), Path(path).resolve().parent)
        source = str(path)
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
