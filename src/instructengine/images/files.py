"""Image files of the image stages: naming, per-image seeds, kill-safe PNG writes, linking.

Each candidate is one PNG, ``images/<pair_id[:2]>/<instruction_id>_<k>.png`` (256 sub-folders keep
folders small at paper scale: ~416K images). A PNG is written to a temporary file in its folder
and renamed over the target, so a killed process never leaves a half-written PNG under the final
name; a zero-byte file (what a machine crash can leave behind) counts as missing. PNGs are not
fsynced one by one (that cost ~4 ms per image here); the stage's tables and manifests are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PNG_META_KEY",
    "candidate_path",
    "image_exists",
    "image_seed",
    "instruction_id",
    "link_or_copy",
    "read_png_meta",
    "write_png",
]

PNG_META_KEY = "instructengine"


def instruction_id(pair_id: str, side: int) -> str:
    """The id of instruction ``side`` (1 or 2) of a pair."""
    return f"{pair_id}_{side}"


def image_seed(base_seed: int, instruction: str, k: int) -> int:
    """The seed of candidate ``k`` of an instruction: a hash, the same in every run and process."""
    digest = hashlib.sha256(f"{base_seed}\x1f{instruction}\x1f{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def candidate_path(instruction: str, k: int) -> str:
    """Path of candidate ``k`` relative to the candidates stage folder."""
    return f"images/{instruction[:2]}/{instruction}_{k}.png"


def image_exists(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def write_png(path: Path, image: np.ndarray, meta: dict[str, Any] | None = None) -> None:
    """Write an (H, W, 3) uint8 image as PNG via temp file + rename (no fsync; see the module doc).

    ``meta`` is stored as JSON in a PNG text chunk (read back by :func:`read_png_meta`).

    Raises:
        ValueError: when ``image`` is not an (H, W, 3) uint8 array.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    info = None
    if meta:
        info = PngInfo()
        info.add_text(PNG_META_KEY, json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_png_meta(path: Path) -> dict[str, Any]:
    """The JSON stored by :func:`write_png` (``{}`` when there is none)."""
    from PIL import Image

    with Image.open(path) as im:
        text = im.info.get(PNG_META_KEY)
    return json.loads(text) if text else {}


def link_or_copy(src: Path, dst: Path, how: str) -> None:
    """Put ``src`` at ``dst`` by hardlink (falling back to a copy across filesystems), copy or
    symlink; an existing ``dst`` is left alone (resume)."""
    if dst.exists() or dst.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    if how == "symlink":
        tmp.symlink_to(os.path.relpath(src, dst.parent))
    elif how == "hardlink":
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    elif how == "copy":
        shutil.copyfile(src, tmp)
    else:
        raise ValueError(f"link must be hardlink, copy or symlink, got {how!r}")
    os.replace(tmp, dst)
