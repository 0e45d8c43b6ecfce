"""Counters of what the client did: requests, retries by cause, cache hits, tokens and cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from instructengine.llm.config import Price

__all__ = ["Usage"]


@dataclass
class Usage:
    """Summed over a client's life; :meth:`since` gives one stage's share for its manifest."""

    prices: dict[str, Price] = field(default_factory=dict)
    http_requests: int = 0
    answers: int = 0
    cache_hits: int = 0
    invalid_answers: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_models: set = field(default_factory=set)

    def add_tokens(self, model: str, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        p = int(usage.get("prompt_tokens") or 0)
        c = int(usage.get("completion_tokens") or 0)
        self.prompt_tokens += p
        self.completion_tokens += c
        price = self.prices.get(model)
        if price is None:
            self.unpriced_models.add(model)
        else:
            self.cost_usd += (p * price.input_per_million + c * price.output_per_million) / 1e6

    def snapshot(self) -> dict[str, Any]:
        return {
            "http_requests": self.http_requests,
            "answers": self.answers,
            "cache_hits": self.cache_hits,
            "invalid_answers": dict(self.invalid_answers),
            "retries": dict(self.retries),
            "dropped": dict(self.dropped),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            # None, not 0, when the cost is unknown: no price table, or a model missing from it
            "cost_usd": round(self.cost_usd, 6) if self.prices and not self.unpriced_models else None,
        }

    @staticmethod
    def since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """``after - before`` for two snapshots (counters subtracted key by key)."""
        out: dict[str, Any] = {}
        for key, value in after.items():
            old = before.get(key)
            if isinstance(value, dict):
                diff = {k: v - (old or {}).get(k, 0) for k, v in value.items()}
                out[key] = {k: v for k, v in diff.items() if v}
            elif value is None:
                out[key] = None
            else:
                out[key] = round(value - (old or 0), 6) if isinstance(value, float) else value - (old or 0)
        return out
