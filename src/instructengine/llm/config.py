"""Configuration of the OpenAI-compatible chat client (``llm:`` section of a data config).

The API key is never a config value: the config names the environment variable that holds it
(``api_key_env``), so resolved configs, manifests and caches never contain it.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from instructengine.config import Config

__all__ = ["LLMConfig", "Price"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class Price(Config):
    """Price of one model in US dollars per million tokens."""

    input_per_million: float = Field(..., ge=0, description="USD per 1M prompt (input) tokens.")
    output_per_million: float = Field(..., ge=0, description="USD per 1M completion (output) tokens.")


class LLMConfig(Config):
    """How to reach an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, SGLang, Ollama...)."""

    base_url: str | None = Field(
        None,
        description="API root, e.g. https://api.openai.com/v1 or http://localhost:8000/v1. "
        "Unset: the environment variable named by `base_url_env`, else OpenAI's.",
    )
    base_url_env: str = Field("OPENAI_BASE_URL", description="Environment variable read when `base_url` is unset.")
    model: str = Field("gpt-4o", description="Model name sent with every request (part of the cache key).")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (sent as a Bearer token; never stored). "
        "Unset or empty: no Authorization header, as local servers expect.",
    )
    concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight at once.")
    requests_per_minute: float | None = Field(
        None, gt=0, description="Optional rate limit: request starts are spaced 60/rpm seconds apart."
    )
    timeout_s: float = Field(
        120.0, gt=0,
        description="Read timeout of one HTTP attempt: the longest wait for the server's answer once connected, seconds.",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Connect timeout of one HTTP attempt (TCP + TLS), seconds; kept short so a dead host fails fast."
    )
    max_retries: int = Field(
        6, ge=0, description="Retries of one request after 429/5xx/408/409 or a broken answer body before the item is dropped."
    )
    max_timeout_retries: int = Field(
        1, ge=0,
        description="Retries after a read timeout (a silent server costs (1 + this) x timeout_s per item); "
        "counted within max_retries.",
    )
    max_connect_retries: int = Field(
        2, ge=0,
        description="Retries after a failure to connect (refused, unreachable, connect timeout): a server that is down "
        "drops its items within seconds, and the next run retries them. Counted within max_retries.",
    )
    backoff_base_s: float = Field(
        1.0, ge=0, description="First retry delay when the server names none; doubles per retry (with jitter)."
    )
    backoff_max_s: float = Field(60.0, ge=0, description="Upper bound of the exponential backoff delay.")
    max_retry_after_s: float = Field(
        120.0, ge=0,
        description="Longest server-requested wait (retry-after-ms / Retry-After) the client waits out; a longer one "
        "drops the item at once as unavailable (retried by the next run), as the openai SDK gives up.",
    )
    max_invalid_retries: int = Field(
        2,
        ge=0,
        description="Re-asks after an answer that is not valid JSON for the schema (the model is shown its "
        "answer and the error); then the item is dropped with reason invalid_answer:<kind>.",
    )
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(2048, ge=1, description="Upper bound of completion tokens per answer.")
    seed: int | None = Field(
        0,
        description="Base seed sent with each request; the sample index is added, so several samples of "
        "one prompt differ and are reproducible. null: no seed is sent.",
    )
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema",
        description="How the expected JSON is requested: response_format json_schema (OpenAI, vLLM, SGLang, "
        "Ollama), json_object, or none (prompt only). Answers are validated against the schema in every mode.",
    )
    strict_schema: bool = Field(False, description="Send json_schema with strict=true (OpenAI's strict subset).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra request fields for a server (e.g. vLLM's chat_template_kwargs); part of the cache key.",
    )
    cache: bool = Field(True, description="Store valid answers in SQLite and reuse them for identical requests.")
    cache_path: str | None = Field(None, description="SQLite cache file; unset: <run_dir>/llm_cache.sqlite.")
    prompts_dir: str | None = Field(
        None, description="Folder whose *.jinja files override the packaged prompt templates of the same name."
    )
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Model name -> price per million tokens, for the cost in manifests."
    )

    def resolved_base_url(self) -> str:
        url = self.base_url or os.environ.get(self.base_url_env) or DEFAULT_BASE_URL
        return url.rstrip("/")

    def api_key(self) -> str | None:
        """The key from the environment (None when unset or empty)."""
        return os.environ.get(self.api_key_env) or None
