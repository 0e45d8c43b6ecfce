"""The asynchronous OpenAI-compatible chat client every LLM/VLM call goes through.

The transport is the ``openai`` SDK (``AsyncOpenAI(max_retries=0)``): its typed errors
(``RateLimitError``, ``APIStatusError``, ``APITimeoutError``, ``APIConnectionError``) say what
went wrong, and its own retry loop is off so that every attempt is decided and counted here: the
pipeline's guarantees rest on which failures are retried, how long to wait, what is counted and
what is cached. The request body is ours, sent unchanged (``extra_body``), so the cache key is
exactly what reached the server.

Behaviour of :meth:`ChatClient.complete_json`:

1. the request (model, messages, params, response_format) and the expected schema form the cache
   key; a cached valid answer is returned without any request;
2. at most ``concurrency`` HTTP attempts are in flight; starts are paced by ``requests_per_minute``;
3. retried, as the openai SDK decides (``_should_retry``): 408, 409, 425, 429 and every 5xx, unless
   the server says ``x-should-retry: false``; any status when it says ``x-should-retry: true``;
   broken 200 bodies. The wait is what the server asked for (``retry-after-ms``, else
   ``retry-after`` in seconds or as an HTTP date) for this request only - other requests go on
   (a 429 answered to one worker never stalls the others) - else exponential backoff with
   jitter. A requested wait longer than ``max_retry_after_s`` is not waited out. Read timeouts
   are retried ``max_timeout_retries`` times and failures to connect ``max_connect_retries``
   times, so a dead or silent server drops its items quickly. When retrying stops:
   :class:`LLMUnavailableError` (a DropItem, reason ``unavailable:<cause>``, a transient drop the
   next run retries);
4. other 4xx (400, 401, 403, 404, 422...) raise :class:`PermanentLLMError` at once;
5. an answer that is not valid for the schema is re-asked up to ``max_invalid_retries`` times,
   showing the model its answer and the problem; then :class:`InvalidAnswerError`
   (reason ``invalid_answer:<kind>``);
6. valid answers are stored in the cache before they are returned.

The API key is read from the environment once and only ever placed in the Authorization header
(no header at all when it is unset, as local servers expect).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from typing import Any, Mapping, Sequence, TypeVar

from pydantic import BaseModel

from instructengine.llm.cache import ResponseCache, request_key
from instructengine.llm.config import LLMConfig
from instructengine.llm.errors import InvalidAnswerError, LLMUnavailableError, PermanentLLMError
from instructengine.llm.ratelimit import Pacer
from instructengine.llm.structured import AnswerProblem, _schema, parse_answer, repair_message, response_format, schema_name
from instructengine.llm.usage import Usage

__all__ = ["ChatClient", "RETRYABLE_STATUS", "parse_retry_after", "retry_after_from_headers", "should_retry"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

#: HTTP statuses worth retrying (besides every 5xx).
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: causes whose retries are bounded by ``max_connect_retries`` / ``max_timeout_retries``
CONNECT_CAUSES = frozenset({"connection", "connect_timeout"})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """The wait a response asks for, read as the openai SDK reads it: ``retry-after-ms``
    (milliseconds) first, then ``retry-after`` (seconds, fractions allowed, or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def should_retry(status: int, headers: Mapping[str, str] | None, max_wait_s: float) -> bool:
    """Whether an error status is worth another attempt (the openai SDK's ``_should_retry``):
    not when the requested wait exceeds ``max_wait_s``; ``x-should-retry: true|false`` decides
    when present; else 408, 409, 425, 429 and 5xx."""
    wait = retry_after_from_headers(headers)
    if wait is not None and math.isfinite(wait) and wait > max_wait_s:
        return False
    flag = (headers or {}).get("x-should-retry")
    if flag == "true":
        return True
    if flag == "false":
        return False
    return status >= 500 or status in RETRYABLE_STATUS


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
        self._key = key
        self._key_present = key is not None
        self._semaphore = asyncio.Semaphore(cfg.concurrency)
        self._pacer = Pacer(cfg.requests_per_minute)
        self._sdk: Any = None
        self._extra_headers: dict[str, Any] = {}
        self._rng = random.Random()
        self.run_id = f"{time.time():.6f}-{random.Random().getrandbits(32):08x}"  # this process's client

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(url={self.url!r}, model={self.cfg.model!r}, concurrency={self.cfg.concurrency})"

    async def __aenter__(self) -> "ChatClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections and the cache (the client owns the cache it was given)."""
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def _client(self) -> Any:
        """The SDK client (made on first use, in the running event loop), its own retries off."""
        if self._sdk is None:
            import importlib

            import openai

            # the SDK's pool (up to 1,000 connections) is not the bound: the semaphore is
            self._sdk = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._key or "no-key",  # never sent without a key: the header is omitted below
                max_retries=0,
                timeout=openai.Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s),
            )
            self._extra_headers = {} if self._key else {"Authorization": openai.Omit()}
            # the response class of the SDK's HTTP library (httpx, or httpx2 in newer SDKs)
            http = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])
            self._response_cls = http.Response
        return self._sdk

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
        key = request_key(body, _schema(schema))
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
            envelope = await self._post({**body, "messages": conversation}, key, schema_name(schema))
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

    async def _attempt(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str, float | None]:
        """One HTTP attempt: (envelope, "", None) on success, else (None, cause, server-requested wait).

        Raises:
            PermanentLLMError: a status that is not retried.
        """
        import openai

        sdk = self._client()
        try:
            # the SDK's documented way to post a body of our own and get the raw response back:
            # no parameter transformation (a third of the client's CPU time), no parsing
            resp = await sdk.post(
                "/chat/completions", cast_to=self._response_cls, body=body, options={"headers": self._extra_headers}
            )
        except openai.APIStatusError as err:
            status, headers = err.status_code, err.response.headers
            if not should_retry(status, headers, self.cfg.max_retry_after_s):
                if status >= 500 or status in RETRYABLE_STATUS:  # retryable, but the server said not now
                    return None, f"http_{status}", math.inf
                raise self._permanent_error(status, err.body, err.message) from None
            return None, f"http_{status}", retry_after_from_headers(headers)
        except openai.APITimeoutError as err:
            return None, "connect_timeout" if _is_connect_failure(err) else "timeout", None
        except openai.APIConnectionError as err:  # refused, unreachable, reset, cut-off body
            log.debug("connection error: %s", type(err.__cause__).__name__)
            return None, "connection", None
        envelope = _read_envelope(resp)
        if envelope is None:
            return None, "bad_response", None
        return envelope, "", None

    async def _post(self, body: dict[str, Any], key: str = "", tag: str = "") -> dict[str, Any]:
        cfg = self.cfg
        cause = "unknown"
        tries: dict[str, int] = {}
        limits = {"timeout": cfg.max_timeout_retries, **{c: cfg.max_connect_retries for c in CONNECT_CAUSES}}
        for attempt in range(cfg.max_retries + 1):
            async with self._semaphore:
                await self._pacer.wait_turn()
                self.usage.http_requests += 1
                if self.cache is not None:
                    self.cache.record_attempt(key, tag, self.run_id)
                envelope, cause, wait = await self._attempt(body)
            if envelope is not None:
                self.usage.answers += 1
                return envelope
            self.usage.retries[cause] += 1
            group = "connect" if cause in CONNECT_CAUSES else cause
            tries[group] = tries.get(group, 0) + 1
            if attempt == cfg.max_retries or tries[group] > limits.get(cause, cfg.max_retries) or wait == math.inf:
                break
            if wait is not None and wait > 0:
                delay = wait  # what the server asked for, for this request only
            else:
                delay = self._backoff(attempt)
            log.debug("retry %d/%d in %.2fs after %s", attempt + 1, cfg.max_retries, delay, cause)
            await asyncio.sleep(delay)  # outside the semaphore: other requests use the slot meanwhile
        self.usage.dropped[f"unavailable:{cause}"] += 1
        raise LLMUnavailableError(cause, sum(tries.values()))

    def _permanent_error(self, status: int, payload: Any, fallback: str) -> PermanentLLMError:
        err = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = err.get("message") if isinstance(err, dict) else None
        message = str(message or err or fallback).strip()[:500]
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

    def usage_totals(self, tags: list[str]) -> dict[str, int]:
        """:meth:`ResponseCache.attempt_totals` (empty without a cache)."""
        return self.cache.attempt_totals(tags) if self.cache is not None else {}

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
            "temperature": self.cfg.temperature,
        }


def _is_connect_failure(err: BaseException) -> bool:
    """True when the SDK error wraps a failure to connect (not one while waiting for the answer)."""
    cause = err.__cause__
    return cause is not None and type(cause).__name__ in ("ConnectTimeout", "ConnectError")


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
