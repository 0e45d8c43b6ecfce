"""The asynchronous OpenAI-compatible chat client every LLM/VLM call goes through.

Built on httpx rather than the ``openai`` package because this client owns the policies the
pipeline's guarantees rest on - which failures are retried and how long to wait (Retry-After,
backoff with jitter, a pause shared by all workers), which fail fast, what is counted, what is
cached - and the SDK's own retry loop would hide the attempts from the counters and cannot be told
apart from ours. The wire format is the plain ``POST {base_url}/chat/completions``.

Behaviour of :meth:`ChatClient.complete_json`:

1. the request (model, messages, params, response_format) and the expected schema form the cache
   key; a cached valid answer is returned without any request;
2. at most ``concurrency`` HTTP attempts are in flight, starts are paced by
   ``requests_per_minute`` and by any server-requested pause;
3. 429 / 5xx / 408 / timeouts / connection errors / unreadable 200 bodies are retried up to
   ``max_retries`` times with exponential backoff and jitter, waiting at least Retry-After;
   then :class:`LLMUnavailableError` (a DropItem, reason ``unavailable:<cause>``);
4. other 4xx (400, 401, 403, 404, 422...) raise :class:`PermanentLLMError` at once;
5. an answer that is not valid for the schema is re-asked up to ``max_invalid_retries`` times,
   showing the model its answer and the problem; then :class:`InvalidAnswerError`
   (reason ``invalid_answer:<kind>``);
6. valid answers are stored in the cache before they are returned.

The API key is read from the environment once and only ever placed in the Authorization header.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel

from instructengine.llm.cache import ResponseCache, request_key
from instructengine.llm.config import LLMConfig
from instructengine.llm.errors import InvalidAnswerError, LLMUnavailableError, PermanentLLMError
from instructengine.llm.ratelimit import Pacer
from instructengine.llm.structured import AnswerProblem, parse_answer, repair_message, response_format, schema_of
from instructengine.llm.usage import Usage

__all__ = ["ChatClient", "RETRYABLE_STATUS"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

#: HTTP statuses worth retrying (besides every 5xx).
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ChatClient:
    """One configured connection to a chat-completions server; use ``async with`` or :meth:`aclose`.

    A client belongs to the event loop it is first used in (its semaphore and connections do);
    make a new one for another ``asyncio.run``.
    """

    def __init__(self, cfg: LLMConfig, cache: ResponseCache | None = None):
        self.cfg = cfg
        self.base_url = cfg.resolved_base_url()
        self.url = f"{self.base_url}/chat/completions"
        self.cache = cache
        self.usage = Usage(prices=dict(cfg.prices))
        key = cfg.api_key()
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._key_present = key is not None
        self._semaphore = asyncio.Semaphore(cfg.concurrency)
        self._pacer = Pacer(cfg.requests_per_minute)
        self._http: Any = None
        self._rng = random.Random()

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(url={self.url!r}, model={self.cfg.model!r}, concurrency={self.cfg.concurrency})"

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections and the cache (the client owns the cache it was given)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            n = self.cfg.concurrency
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.cfg.timeout_s),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            )
        return self._http

    # ---------------------------------------------------------------------------------------
    def build_body(
        self,
        messages: Sequence[dict[str, Any]],
        schema: type[BaseModel] | None = None,
        *,
        seed: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The JSON body of one request (also the cache key's main part)."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": list(messages),
            "temperature": cfg.temperature if temperature is None else temperature,
            "max_tokens": cfg.max_tokens if max_tokens is None else max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if schema is not None:
            fmt = response_format(schema, cfg.structured_output, cfg.strict_schema)
            if fmt is not None:
                body["response_format"] = fmt
        body.update(cfg.extra_body)
        return body

    async def complete_json(
        self,
        messages: Sequence[dict[str, Any]],
        schema: type[M],
        *,
        seed: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> M:
        """Ask for an answer of shape ``schema``; see the module docstring for the policy.

        Raises:
            PermanentLLMError: the server rejected the request (fail fast).
            LLMUnavailableError: retries exhausted (a DropItem).
            InvalidAnswerError: the answer stayed invalid (a DropItem).
        """
        body = self.build_body(messages, schema, seed=seed, temperature=temperature, max_tokens=max_tokens)
        key = request_key(body, schema_of(schema))
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    answer = parse_answer(hit["content"], schema)
                except AnswerProblem:
                    pass  # a stale entry (validation rules changed): ask again
                else:
                    self.usage.cache_hits += 1
                    return answer
        conversation = list(body["messages"])
        problem: AnswerProblem | None = None
        for _ in range(self.cfg.max_invalid_retries + 1):
            envelope = await self._post({**body, "messages": conversation})
            choice = envelope["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content")
            self.usage.add_tokens(self.cfg.model, envelope.get("usage"))
            try:
                answer = parse_answer(content, schema, choice.get("finish_reason"), message.get("refusal"))
            except AnswerProblem as err:
                problem = err
                self.usage.invalid_answers[err.kind] += 1
                log.debug("invalid answer (%s): %s", err.kind, err.detail)
                conversation = [
                    *conversation,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": repair_message(err, schema)},
                ]
                continue
            if self.cache is not None:
                self.cache.put(key, self.cfg.model, body, content, envelope.get("usage") or {})
            return answer
        assert problem is not None
        self.usage.dropped[f"invalid_answer:{problem.kind}"] += 1
        raise InvalidAnswerError(problem.kind, problem.detail)

    # ---------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2**attempt))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        http = self._client()
        cfg = self.cfg
        cause = "unknown"
        for attempt in range(cfg.max_retries + 1):
            retry_after: float | None = None
            async with self._semaphore:
                await self._pacer.wait_turn()
                self.usage.http_requests += 1
                try:
                    resp = await http.post(self.url, json=body, headers=self._headers)
                except httpx.TimeoutException:
                    cause = "timeout"
                except httpx.TransportError as err:  # refused, reset, cut-off body...
                    cause = "connection"
                    log.debug("connection error: %s", type(err).__name__)
                else:
                    status = resp.status_code
                    if status == 200:
                        envelope = _read_envelope(resp)
                        if envelope is not None:
                            self.usage.answers += 1
                            return envelope
                        cause = "bad_response"
                    elif status >= 500 or status in RETRYABLE_STATUS:
                        cause = f"http_{status}"
                        retry_after = parse_retry_after(resp.headers.get("retry-after"))
                    else:
                        raise self._permanent_error(resp)
            self.usage.retries[cause] += 1
            if attempt == cfg.max_retries:
                break
            delay = self._backoff(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, cfg.max_retry_after_s))
                self._pacer.pause_for(delay)  # the server asked everyone to wait, not only this worker
            log.debug("retry %d/%d in %.2fs after %s", attempt + 1, cfg.max_retries, delay, cause)
            await asyncio.sleep(delay)
        self.usage.dropped[f"unavailable:{cause}"] += 1
        raise LLMUnavailableError(cause, cfg.max_retries + 1)

    def _permanent_error(self, resp: Any) -> PermanentLLMError:
        status = resp.status_code
        try:
            payload = resp.json()
            err = payload.get("error", payload) if isinstance(payload, dict) else payload
            message = err.get("message") if isinstance(err, dict) else None
            message = str(message or err)
        except ValueError:
            message = resp.text
        message = message.strip()[:500]
        if status in (401, 403):
            hint = (
                f"check the API key: environment variable {self.cfg.api_key_env} is "
                f"{'set' if self._key_present else 'NOT set'}"
            )
        elif status == 404:
            hint = f"check llm.base_url ({self.base_url!r}; the client posts to <base_url>/chat/completions) and llm.model ({self.cfg.model!r})"
        elif status in (400, 422):
            hint = (
                "the server rejected the request's content; if the message is about response_format or "
                "json_schema, set llm.structured_output=json_object (or none)"
            )
        else:
            hint = "this status is not retried"
        return PermanentLLMError(status, self.url, self.cfg.model, message, hint)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the client (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.cfg.model,
            "api_key_env": self.cfg.api_key_env,
            "api_key_present": self._key_present,
            "structured_output": self.cfg.structured_output,
            "concurrency": self.cfg.concurrency,
            "requests_per_minute": self.cfg.requests_per_minute,
        }


def _read_envelope(resp: Any) -> dict[str, Any] | None:
    """The parsed response if it has ``choices[0]``; None for a broken or cut-off body."""
    try:
        data = resp.json()
    except ValueError:
        return None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return None
    return data
