"""Chat messages with text and images, in the OpenAI content-part format."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

__all__ = ["image_part", "system_message", "user_message"]


def image_part(image: Any, detail: str = "auto") -> dict[str, Any]:
    """An ``image_url`` content part holding the image inline as a base64 data URL.

    ``image`` is a file path, PNG/JPEG bytes, or a PIL image (sent as PNG). Inline data keeps the
    request self-contained, so the cache key covers the image itself, not a path that may change.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        data = path.read_bytes()
        mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    elif hasattr(image, "save"):  # PIL.Image.Image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, got {type(image).__name__}")
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def system_message(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def user_message(text: str, images: Sequence[Any] = ()) -> dict[str, Any]:
    """A user turn: plain text, or text followed by image parts when ``images`` is given."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}, *(image_part(im) for im in images)]}
