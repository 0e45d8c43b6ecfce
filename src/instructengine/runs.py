"""Run directories, stage manifests, atomic writes and resume bookkeeping.

Layout (DESIGN.md): ``<run>/<stage>/`` per stage, each with its artifact(s), ``config.yaml`` (the
resolved config) and ``manifest.json``. Guarantees:

* **Atomic writes**: every artifact is written to a temporary file in the same folder, flushed,
  fsynced and renamed over the target, so a killed process leaves either the old file or the new
  one, never a half-written file that a later run would trust.
* **Resume**: a stage records finished items in an append-only :class:`Ledger` (JSON lines, one
  fsynced line per item). A torn last line from a crash is ignored; a re-run asks the ledger what
  is done and skips it.
* **Manifest**: counts in/out/dropped-by-reason, config hash, package versions, timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator
from instructengine.errors import UsageError

__all__ = [
    "EmptyArtifactError",
    "Ledger",
    "Manifest",
    "StageDir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_safetensors",
    "atomic_write_text",
    "package_versions",
    "share_files",
]

_VERSIONED = (
    "instructengine", "torch", "diffusers", "transformers", "accelerate", "peft", "numpy",
    "pyarrow", "pydantic",
)


_UMASK = os.umask(0)
os.umask(_UMASK)
#: modes of what a run writes: 0644 / 0755 under the usual umask 022 (readable by the group, so
#: teammates on a shared cluster can read a run's outputs)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_parquet(path: Path, table: Any) -> Path:
    """Write a pyarrow Table or pandas DataFrame to parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as a safetensors file atomically, with ordinary permissions (safetensors'
    own ``save_file`` writes through a 0600 temporary file)."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def share_files(root: Path) -> Path:
    """Give every file (and folder) under ``root`` the ordinary modes :data:`FILE_MODE` /
    :data:`DIR_MODE`; for folders written by a library's ``save_pretrained`` (diffusers,
    transformers), whose safetensors files come out 0600. Call it before renaming the folder into
    place. Returns ``root``."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, DIR_MODE)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)
    return root


class EmptyArtifactError(UsageError, ValueError):
    """A stage would replace an artifact that has rows with one that has none."""


def keep_nonempty(path: Path, n_rows: int, stage: str, why: str = "") -> None:
    """Refuse to let a stage replace a non-empty parquet artifact at ``path`` by an empty one
    (an outage or a bad review file must not silently wipe good data).

    Raises:
        EmptyArtifactError: ``n_rows == 0`` while ``path`` holds rows; nothing is written.
    """
    path = Path(path)
    if n_rows or not path.is_file():
        return
    import pyarrow.parquet as pq

    try:
        old = pq.ParquetFile(path).metadata.num_rows
    except Exception:  # an unreadable old file is not good data worth keeping
        return
    if old:
        raise EmptyArtifactError(
            f"stage {stage!r} kept nothing{f' ({why})' if why else ''}, and {path} holds {old} rows from an "
            "earlier run: it was left as it is. Fix the cause and run the stage again"
        )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class Ledger:
    """Append-only record of finished items of a stage (one JSON object per line, keyed by ``key``).

    Each :meth:`add` appends one line and fsyncs, so a SIGKILL loses at most the item being
    written; a torn final line is ignored on load (that item is simply redone).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from a crash: the item is redone
                if isinstance(rec, dict) and "key" in rec:
                    self._records[str(rec["key"])] = rec
        self._fh = None

    def __contains__(self, key: object) -> bool:
        return str(key) in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(str(key))

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def add(self, key: str, **fields: Any) -> None:
        rec = {"key": str(key), **fields}
        if self._fh is None:
            torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._fh = open(self.path, "a", encoding="utf-8")
            if torn:  # finish the torn line of a crashed writer so the next record starts clean
                self._fh.write("\n")
        self._fh.write(json.dumps(rec, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._records[str(key)] = rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Manifest:
    """What a stage read and wrote, how many items went in, came out or were dropped, and why."""

    stage: str
    config_hash: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    count_in: int = 0
    count_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    finished_at: str | None = None
    versions: dict[str, str] = field(default_factory=package_versions)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "counts": {
                "in": self.count_in,
                "out": self.count_out,
                "dropped": dict(sorted(self.dropped.items())),
                "dropped_total": sum(self.dropped.values()),
            },
            "extra": self.extra,
            "timings_s": self.timings,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "versions": self.versions,
        }


class StageDir:
    """One stage's folder inside a run: paths, the resolved config, the ledger and the manifest."""

    def __init__(self, run_dir: str | Path, stage: str):
        self.root = Path(run_dir) / stage
        self.stage = stage
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def ledger(self, name: str = "progress.jsonl") -> Ledger:
        return Ledger(self.root / name)

    def new_manifest(self, config: Any = None) -> Manifest:
        from instructengine.config import config_hash, save_resolved

        m = Manifest(stage=self.stage)
        if config is not None:
            m.config_hash = config_hash(config)
            save_resolved(config, self.root / "config.yaml")
        return m

    def write_manifest(self, manifest: Manifest) -> Path:
        manifest.finished_at = datetime.now(timezone.utc).isoformat()
        return atomic_write_json(self.manifest_path, manifest.to_dict())

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_complete(self, config_hash: str | None = None) -> bool:
        """True when a manifest exists (and, if given, was written with the same config hash)."""
        m = self.read_manifest()
        return m is not None and m.get("finished_at") is not None and (
            config_hash is None or m.get("config_hash") == config_hash
        )
