"""The images a study serves: metadata-free PNG copies made at creation, re-checked on every read.

Blindness needs more than hiding names in the API: a generator's PNG text chunks ("parameters:
model ..."), EXIF fields or the file format itself can name the system. At study creation each
image is decoded, turned upright (EXIF orientation), converted to sRGB when it carries an ICC
profile, and re-encoded from its bare pixels as a PNG with no ancillary chunks; the copy is
stored content-addressed (``<sha256>.png``, read-only) in the study's image folder and only the
copy is ever served. Pixels are unchanged (PNG is lossless); only the container differs.

At request time :func:`read_served_image` opens a registered copy without following symlinks,
requires a regular file directly inside the study's image folder, and checks its SHA-256 against
the digest recorded at creation, so a file replaced later (by a symlink, another image, a
truncated file, a directory) is refused instead of served.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServedImageError", "StoredImage", "clean_png", "degraded_png", "read_served_image", "store_png"]

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: image info keys that say nothing about the source (kept out of the metadata count)
_HARMLESS_INFO = {"dpi", "gamma", "srgb", "chromaticity", "aspect", "transparency"}
#: the largest registered file read back (a 4096 px RGBA PNG is below this)
MAX_SERVED_BYTES = 128 * 1024 * 1024


class ServedImageError(OSError):
    """A registered image cannot be served as registered; the message says why (admin log only)."""


@dataclass(frozen=True)
class StoredImage:
    path: Path
    sha256: str
    had_metadata: bool
    metadata_keys: tuple[str, ...]


def _metadata_keys(im) -> tuple[str, ...]:
    keys = set(getattr(im, "text", {}) or {}) | set(im.info)
    return tuple(sorted(k for k in keys if str(k).lower() not in _HARMLESS_INFO))


def clean_png(src: Path | bytes) -> tuple[bytes, tuple[str, ...]]:
    """(PNG bytes of the bare pixels, metadata keys found in the source).

    The image is turned upright by its EXIF orientation, converted to sRGB if it carries an ICC
    profile, and rebuilt from raw pixels (RGB, or RGBA when it has alpha), so no text, EXIF,
    ICC, XMP or timestamp chunk survives. Raises OSError when the source is not a readable image.
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as opened:
        opened.load()
        keys = _metadata_keys(opened)
        im = ImageOps.exif_transpose(opened)
        icc = opened.info.get("icc_profile")
        has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        mode = "RGBA" if has_alpha else "RGB"
        if icc:
            try:
                from PIL import ImageCms

                src_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                im = ImageCms.profileToProfile(im.convert(mode), src_profile, ImageCms.createProfile("sRGB"),
                                               outputMode=mode)
            except Exception as err:  # an unusable profile: keep the pixels as they are
                log.warning("ICC profile of %s not applied (%s); pixels kept as stored", src if isinstance(src, Path) else "image", err)
        im = im.convert(mode)
        bare = Image.frombytes(mode, im.size, im.tobytes())  # no info dict: nothing to carry over
    buf = io.BytesIO()
    bare.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), keys


def degraded_png(png: bytes, blur_fraction: float) -> bytes:
    """A visibly worse copy for a gold item: Gaussian blur of radius ``blur_fraction`` x width (at least 2 px)."""
    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(png)) as im:
        im.load()
        radius = max(2.0, blur_fraction * im.width)
        blurred = im.filter(ImageFilter.GaussianBlur(radius))
    return clean_png(_png_bytes(blurred))[0]


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def store_png(data: bytes, images_dir: Path) -> tuple[Path, str]:
    """Write ``data`` as ``<images_dir>/<sha256>.png`` (read-only; kept if already there); (path, digest)."""
    digest = hashlib.sha256(data).hexdigest()
    path = images_dir / f"{digest}.png"
    if path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
        return path, digest
    tmp = images_dir / f".{digest}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)
    return path, digest


def read_served_image(path: str, sha256: str, images_dir: str) -> bytes:
    """The bytes of a registered image, after checking it is still the file registered.

    Raises:
        ServedImageError: the path is not directly inside ``images_dir``, goes through a symlink,
            is not a regular file, is too large, or its SHA-256 differs from the registered one
            (also when it was replaced by another valid image).
    """
    p = Path(path)
    if not p.is_absolute() or str(p.parent) != images_dir:
        raise ServedImageError(f"{path} is not inside the study's image folder {images_dir}")
    if os.path.realpath(p) != str(p):
        raise ServedImageError(f"{path} goes through a symlink")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(p, flags)
    except OSError as err:
        raise ServedImageError(f"{path} cannot be opened: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ServedImageError(f"{path} is not a regular file")
        if st.st_size > MAX_SERVED_BYTES:
            raise ServedImageError(f"{path} is {st.st_size} bytes, over {MAX_SERVED_BYTES}")
        chunks, left = [], MAX_SERVED_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        if isinstance(err, ServedImageError):
            raise
        raise ServedImageError(f"{path} cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ServedImageError(f"{path} changed since the study was created (SHA-256 differs)")
    if not data.startswith(PNG_SIGNATURE):  # cannot happen for an unchanged copy; kept as a last guard
        raise ServedImageError(f"{path} is not a PNG")
    return data
