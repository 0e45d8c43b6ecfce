"""Scripted VLM answers for the image judge: the 'VLM' decodes the image it was sent and judges it.

:class:`OracleVLM` runs the ShapesWorld oracle on the image against the instruction (so its
verdicts can be compared with the oracle judge's); :class:`HashVLM` answers by a hash of the image
bytes (for non-ShapesWorld prompts). Text-stage requests are passed to :class:`TextStageResponder`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from typing import Any

import numpy as np
from scripted_server import schema_name
from text_responder import TextStageResponder


def request_image(body: dict[str, Any]) -> tuple[bytes, str]:
    """(PNG bytes, instruction) of a judge request."""
    for msg in body["messages"]:
        if msg.get("role") == "user" and isinstance(msg.get("content"), list):
            text = next(p["text"] for p in msg["content"] if p.get("type") == "text")
            url = next(p["image_url"]["url"] for p in msg["content"] if p.get("type") == "image_url")
            instruction = re.match(r"Instruction: (.*)", text).group(1).strip()
            return base64.b64decode(url.split(",", 1)[1]), instruction
    raise ValueError("no user message with an image")


class OracleVLM:
    def __init__(self):
        self.text = TextStageResponder()

    def __call__(self, body: dict[str, Any]) -> Any:
        if schema_name(body) != "image_judge":
            return self.text(body)
        from PIL import Image

        from instructengine.shapes.oracle import judge

        png, instruction = request_image(body)
        verdict = judge(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), instruction)
        wrong = [k for k, v in verdict.items() if v is False and k != "exact"]
        return {"matches": bool(verdict["exact"]), "reason": "all as stated" if not wrong else f"wrong {wrong[0]}"}


class HashVLM(OracleVLM):
    """Rejects about one image in ``every``, chosen by the image's bytes."""

    def __init__(self, every: int = 3):
        super().__init__()
        self.every = every

    def __call__(self, body: dict[str, Any]) -> Any:
        if schema_name(body) != "image_judge":
            return self.text(body)
        png, _ = request_image(body)
        ok = int(hashlib.sha256(png).hexdigest()[:8], 16) % self.every != 0
        return {"matches": ok, "reason": "looks right" if ok else "the image does not show it"}
