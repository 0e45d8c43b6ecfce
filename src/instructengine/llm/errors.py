"""Errors of the chat client.

Two families, handled differently by the stages:

* :class:`PermanentLLMError` (HTTP 400/401/403/404/422 and other non-retryable 4xx): the request
  itself is wrong (bad key, unknown model, unsupported parameter), so every other item would fail
  the same way. It is not a :class:`DropItem`: it aborts the stage at once with a clear message.
* :class:`LLMUnavailableError` and :class:`InvalidAnswerError` are :class:`DropItem` subclasses:
  this one item could not be answered (the server stayed unavailable through all retries, or the
  answer stayed malformed through all re-asks). The stage counts it under ``reason`` and goes on.
"""

from __future__ import annotations

from instructengine.backends import DropItem
from instructengine.errors import UsageError

__all__ = ["InvalidAnswerError", "LLMUnavailableError", "PermanentLLMError"]


class PermanentLLMError(UsageError, RuntimeError):
    """The server rejected the request in a way retrying cannot fix."""

    def __init__(self, status: int, url: str, model: str, server_message: str, hint: str = ""):
        self.status = status
        self.url = url
        self.model = model
        self.server_message = server_message
        text = f"HTTP {status} from {url} (model {model!r}): {server_message or '<no message>'}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class LLMUnavailableError(DropItem):
    """Retries exhausted on 429/5xx/timeouts/connection errors; ``cause`` is the last one."""

    def __init__(self, cause: str, attempts: int):
        super().__init__(f"unavailable:{cause}", f"no answer after {attempts} attempts")
        self.cause = cause
        self.attempts = attempts


class InvalidAnswerError(DropItem):
    """The answer stayed invalid (not JSON, wrong shape, cut off, refused) after all re-asks."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"invalid_answer:{kind}", detail)
        self.kind = kind
