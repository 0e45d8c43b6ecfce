"""Where scorer weights come from: a local path, a file in a Hugging Face Hub repo, or a URL.

A *weight source* is a string:

* an existing local path (file or folder) — used as is;
* ``https://...`` — downloaded once into ``$INSTRUCTENGINE_CACHE`` (default
  ``~/.cache/instructengine/weights``) and reused;
* ``owner/repo/path/in/repo.ext`` — one file of a Hub repo, fetched with ``hf_hub_download``;
* ``owner/repo`` — a whole Hub model repo (for ``from_pretrained``), returned unchanged.

Nothing here downloads at import time; tests only ever pass local paths.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "is_torchscript_archive", "load_state_dict", "resolve_file"]


def cache_dir() -> Path:
    return Path(os.environ.get("INSTRUCTENGINE_CACHE", Path.home() / ".cache" / "instructengine")) / "weights"


def resolve_file(source: str, what: str = "weights") -> Path:
    """Return a local path for a single-file weight source (local path, URL or Hub file).

    Raises:
        FileNotFoundError: when ``source`` is neither an existing path, a URL, nor of the form
            ``owner/repo/file`` (the message names ``what`` the file was for).
    """
    p = Path(source).expanduser()
    if p.exists():
        return p
    if source.startswith(("http://", "https://")):
        return _download_url(source)
    parts = source.split("/")
    if len(parts) >= 3 and not source.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:])))
    raise FileNotFoundError(
        f"{what}: {source!r} is not an existing path, an http(s) URL, or a Hub file 'owner/repo/path/file'"
    )


def _download_url(url: str) -> Path:
    import httpx

    name = url.rstrip("/").split("/")[-1].split("?")[0] or "download"
    target = cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:12] / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as r:
        r.raise_for_status()
        with open(tmp, "wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)
    os.replace(tmp, target)
    return target


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip archive (``torch.jit.save``), e.g. OpenAI's ``ViT-L-14.pt``."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/__torch__" in n for n in z.namelist())


def load_state_dict(path: str | Path, what: str = "weights", trust_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint file (``.safetensors``, a torch pickle, or a TorchScript archive) onto the CPU.

    Torch pickles are read with ``weights_only=True`` (tensors, dicts, numbers only). A checkpoint
    that also pickles Python objects (some training checkpoints store their argparse config) needs
    ``trust_pickle=True``, which runs the full unpickler: only for files from a source you trust.
    A TorchScript archive (OpenAI's CLIP ``.pt`` files are ``torch.jit`` archives; ``clip.load``
    reads them the same way) is opened with ``torch.jit.load`` and only its ``state_dict()`` is
    kept: TorchScript's unpickler restores TorchScript types only, and no method of the archive is run.

    Raises:
        ValueError: the file cannot be read this way, or does not hold a dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    if is_torchscript_archive(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{what}: could not read TorchScript archive {str(path)!r}: {err}") from err
        return {k: v.detach() for k, v in module.state_dict().items()}

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        hint = "" if trust_pickle else " (if it pickles Python objects and you trust it, set trust_pickle: true)"
        raise ValueError(f"{what}: could not read checkpoint {str(path)!r}{hint}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a state dict")
    return obj
