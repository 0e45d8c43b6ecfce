"""What the text stages (taxonomy, entities, instruction pairs) talk to: an instruction backend
and a text embedder.

Two bundles implement these protocols and are interchangeable in every stage:

* the real one: :class:`instructengine.llm.backend.LLMInstructionBackend` (any OpenAI-compatible
  chat server) plus :class:`CLIPTextEmbedder` (a transformers CLIP text tower);
* a bundle's offline one, registered in :mod:`instructengine.registry` (ShapesWorld: a rule-based
  backend and a tiny contrastive model's text tower).

Contract of an :class:`InstructionBackend` (all methods are coroutines so one stage loop serves a
remote API and a local rule set alike):

* each method returns plain Python values (strings, tuples, bools); it never returns
  placeholders for a failed answer;
* a failure that concerns only this item (an answer that stayed malformed after its retries, a
  server that stayed unavailable) raises :class:`DropItem` carrying a short machine-readable
  ``reason`` (e.g. ``"invalid_answer:not_json"``, ``"unavailable:http_500"``); the stage records
  the item as dropped under that reason and goes on;
* any other exception (a wrong API key, an unknown model: see
  :class:`instructengine.llm.errors.PermanentLLMError`) aborts the stage: it would fail every item.

Optional attributes a stage uses when present: ``fingerprint`` (a string identifying what answers
this backend gives, e.g. model + prompts; part of the resume-ledger name, so a different model
never reuses another model's ledger) and ``usage()`` (a dict of request/token/cost counters that
the stage writes into its manifest).

The module also holds the small helpers the three stages share (text normalisation, greedy
near-duplicate merging, a bounded concurrent map). Heavy imports (torch, transformers) happen
inside :class:`CLIPTextEmbedder` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import unicodedata
import zlib
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np
from pydantic import Field, field_validator

from instructengine.config import Config

__all__ = [
    "BackendConfig",
    "CLIPTextEmbedder",
    "DropItem",
    "EmbedderConfig",
    "InstructionBackend",
    "NgramHashEmbedder",
    "TextEmbedder",
    "backend_usage",
    "build_embedder",
    "clean_name",
    "fingerprint_of",
    "greedy_merge",
    "is_transient",
    "item_key",
    "ledger_name",
    "ledgered",
    "normalize_text",
    "run_bounded",
    "should_redo",
    "stable_id",
    "usage_since",
    "usage_totals",
]

T = TypeVar("T")


class DropItem(Exception):
    """One item failed for a reason that concerns it alone; the stage drops it and counts ``reason``.

    ``reason`` is short and stable (it becomes a key of the manifest's ``dropped`` counter);
    ``detail`` is free text for logs.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@runtime_checkable
class InstructionBackend(Protocol):
    """Produces the text of the data pipeline: themes, subtopics, entities and instruction pairs.

    ``sample`` is the index (0, 1, ...) of one of several independent draws of the same request;
    draws with different indices should differ (an LLM backend sends a different ``seed``, a rule
    backend uses it as its random seed), draws with the same index must be reproducible.
    """

    async def propose_themes(self, seeds: list[str], n: int, sample: int) -> list[str]:
        """Up to ``n`` primary themes of text-to-image use, in the spirit of the seed themes."""
        ...

    async def propose_subtopics(self, theme: str, axis: str, n: int, sample: int) -> list[str]:
        """Up to ``n`` subtopics of ``theme`` along one axis (theme, style, purpose, ...)."""
        ...

    async def propose_entities(self, theme: str, subtopic: str, n: int) -> list[str]:
        """Up to ``n`` concrete, drawable entities belonging to the subtopic."""
        ...

    async def confirm_entity(self, theme: str, subtopic: str, entity: str) -> bool:
        """True when ``entity`` belongs to the subtopic (the yes/no check)."""
        ...

    async def contrast_pairs(
        self, theme: str, subtopic: str, entity: str, dimension: str, n: int
    ) -> list[tuple[str, str]]:
        """Up to ``n`` pairs (x1, x2) of instructions about ``entity`` contrasting along ``dimension``
        (one of :data:`instructengine.data.schema.DIMENSIONS`)."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """Maps texts to L2-normalised vectors (float32, shape ``(len(texts), dim)``); cosine = dot."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def backend_usage(backend: Any) -> dict[str, Any]:
    """The backend's usage counters (requests, tokens, cost) or ``{}`` when it keeps none."""
    fn = getattr(backend, "usage", None)
    return dict(fn()) if callable(fn) else {}


def usage_totals(backend: Any, schemas: list[str]) -> dict[str, Any]:
    """Requests paid for these answer schemas over all runs of this run folder (a killed run's
    included: each attempt is noted before it is sent), or ``{}`` when the backend keeps none."""
    fn = getattr(backend, "usage_totals", None)
    return dict(fn(schemas)) if callable(fn) else {}


def usage_since(backend: Any, before: dict[str, Any]) -> dict[str, Any]:
    """What the backend used since ``before`` (an earlier :func:`backend_usage`): a stage's share."""
    from instructengine.llm.usage import Usage

    after = backend_usage(backend)
    return Usage.since(before, after) if after else {}


# --------------------------------------------------------------------------------------------
# Embedders


class NgramHashEmbedder:
    """A lexical embedder: hashed character n-grams of the normalised text, L2-normalised.

    No weights, deterministic across processes (crc32, not Python's salted ``hash``). It measures
    spelling overlap, not meaning: good for merging near-identical names ("Watercolour
    landscapes" / "watercolor landscape") and for offline tests; use CLIP for semantic filters.
    """

    def __init__(self, dim: int = 512, n: int = 3):
        if dim < 8 or n < 1:
            raise ValueError(f"NgramHashEmbedder needs dim >= 8 and n >= 1, got dim={dim}, n={n}")
        self.dim = dim
        self.n = n
        self.fingerprint = f"ngram:dim={dim}:n={n}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            padded = f" {normalize_text(text)} "
            for j in range(max(1, len(padded) - self.n + 1)):
                gram = padded[j : j + self.n].encode("utf-8")
                out[i, zlib.crc32(gram) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class CLIPTextEmbedder:
    """CLIP text embeddings (the projected text features) from a transformers model.

    ``model`` is a ``CLIPTextModelWithProjection`` or a ``CLIPModel``; ``tokenizer`` is any
    transformers tokenizer for it. Calls are serialised by a lock, so stages may call
    :meth:`embed` from worker threads (torch releases the GIL during the forward pass).
    """

    def __init__(
        self, model: Any, tokenizer: Any, device: str = "cpu", batch_size: int = 256, fingerprint: str | None = None
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        config_digest = hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:12]
        self.fingerprint = fingerprint or f"clip:{type(model).__name__}:{config_digest}"
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str = "cpu", batch_size: int = 256, local_files_only: bool = False
    ) -> "CLIPTextEmbedder":
        """Load the text tower of a CLIP checkpoint (hub id or local folder; a full ``CLIPModel``
        checkpoint works, its vision weights are skipped).

        Raises:
            ValueError: when the checkpoint lacks text-tower weights (they would be random).
        """
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        model, info = CLIPTextModelWithProjection.from_pretrained(
            name_or_path, local_files_only=local_files_only, output_loading_info=True
        )
        missing = [k for k in info.get("missing_keys", []) if k]
        if missing:
            raise ValueError(
                f"CLIP checkpoint {name_or_path!r} has no weights for {sorted(missing)[:5]} "
                f"({len(missing)} keys): it is not a CLIP text model with a projection"
            )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        return cls(model, tokenizer, device=device, batch_size=batch_size, fingerprint=f"clip:{name_or_path}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim()), dtype=np.float32)
        max_len = getattr(self.model.config, "max_position_embeddings", 77)
        chunks = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                if hasattr(self.model, "get_text_features"):
                    feats = self.model.get_text_features(**enc)
                    feats = feats if torch.is_tensor(feats) else feats.pooler_output
                else:
                    feats = self.model(**enc).text_embeds
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
                chunks.append(feats.cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)

    def _dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or getattr(cfg, "hidden_size"))


class EmbedderConfig(Config):
    """Which text embedder the stages use for near-duplicate merging and the entity filter."""

    kind: str = Field(
        "clip",
        description="clip: a transformers CLIP text tower (`model`); ngram: the weight-free lexical "
        "NgramHashEmbedder; or an embedder a bundle registered / an import path 'package.module:factory', "
        "called with `options`.",
    )
    model: str = Field(
        "openai/clip-vit-large-patch14",
        description="CLIP hub id or local folder (kind=clip); the paper used CLIP for the entity filter.",
    )
    device: str = Field("cpu", description="torch device of the CLIP model, e.g. cpu, cuda, cuda:1.")
    batch_size: int = Field(256, ge=1, description="Texts per CLIP forward pass.")
    local_files_only: bool = Field(False, description="Never reach the hub when loading the CLIP model.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the embedder factory (kinds other than clip).")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("embedder", v, builtin=("clip",))


class BackendConfig(Config):
    """Which instruction backend the text stages use."""

    kind: str = Field(
        "llm",
        description="llm: the OpenAI-compatible chat backend configured under `llm`; or a backend a bundle "
        "registered (instructengine.registry kind 'instruction_backend') / an import path "
        "'package.module:factory', called with `options`.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the backend factory (kinds other than llm).")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from instructengine.registry import check_name

        return check_name("instruction_backend", v, builtin=("llm",))


def build_embedder(cfg: EmbedderConfig) -> TextEmbedder:
    """Construct the embedder an :class:`EmbedderConfig` names."""
    from instructengine.errors import loading, require_device

    if cfg.kind == "clip":
        require_device("embedder.device", cfg.device)
        with loading("embedder.model", cfg.model):
            return CLIPTextEmbedder.from_pretrained(
                cfg.model, device=cfg.device, batch_size=cfg.batch_size, local_files_only=cfg.local_files_only
            )
    from instructengine import registry

    embedder = registry.instantiate("embedder", cfg.kind, where="embedder.kind", **cfg.options)
    if not isinstance(embedder, TextEmbedder):
        raise ValueError(f"embedder kind {cfg.kind!r} built {type(embedder).__name__}, which has no embed(texts)")
    return embedder


# --------------------------------------------------------------------------------------------
# Helpers shared by the text stages

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case-folded, accent-kept, whitespace-collapsed form used to compare names."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    return _SPACE.sub(" ", text).strip(" \t\n.;:,-")


def clean_name(text: str) -> str:
    """A proposed name as stored: surrounding spaces/quotes/bullets removed, inner spaces collapsed."""
    text = unicodedata.normalize("NFKC", str(text))
    text = _SPACE.sub(" ", text).strip()
    text = re.sub(r"^(?:[-*\u2022]+|\d+[.)])\s*", "", text)  # list bullets, "1." / "2)"
    return text.strip(" \"'`.")


def stable_id(*parts: str, length: int = 12) -> str:
    """A short id that is the same in every run for the same parts."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:length]


def greedy_merge(
    names: Sequence[str], embedder: TextEmbedder, threshold: float, limit: int | None = None
) -> tuple[list[int], dict[int, int], list[int]]:
    """Merge near-duplicates, earlier names winning, keeping at most ``limit`` names.

    Walks ``names`` in order: a name whose cosine similarity to an already kept one is >=
    ``threshold`` is merged into that one; otherwise it is kept, or left over once ``limit`` names
    are kept. Returns (indices kept, {merged index: kept index it joins}, left-over indices).
    """
    if not names:
        return [], {}, []
    vecs = embedder.embed(list(names))
    kept: list[int] = []
    merged: dict[int, int] = {}
    left: list[int] = []
    for i in range(len(names)):
        if kept:
            sims = vecs[kept] @ vecs[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                merged[i] = kept[j]
                continue
        if limit is not None and len(kept) >= limit:
            left.append(i)
        else:
            kept.append(i)
    return kept, merged, left


def is_transient(reason: str) -> bool:
    """True for a drop that a later run may not repeat: the server was unavailable (429, 5xx,
    timeouts, connection failures, broken bodies: ``unavailable:<cause>``). Invalid answers and
    content filters are permanent: the same request would get the same answer."""
    return str(reason).startswith("unavailable:")


def should_redo(reason: str, retry_dropped: bool) -> bool:
    """Whether a dropped item is tried again on this run: always when its drop was transient,
    every drop with ``retry_dropped``."""
    return retry_dropped or is_transient(reason)


async def ledgered(ledger: Any, key: str, work: Callable[[], Awaitable[dict[str, Any]]], retry_dropped: bool = False) -> None:
    """Do one resumable item: skip it when ``ledger`` has it, else run ``work`` and record the result.

    ``work`` returns the fields to store (status "done"); a :class:`DropItem` it raises is stored
    as status "dropped" with its reason. A re-run tries a dropped item again when the drop was
    transient (:func:`is_transient`: the server was down or rate-limited), and every dropped item
    with ``retry_dropped``; a permanent drop stays dropped (and counted).
    """
    rec = ledger.get(key)
    if rec is not None and not (rec.get("status") == "dropped" and should_redo(rec.get("reason", ""), retry_dropped)):
        return
    try:
        fields = await work()
    except DropItem as drop:
        ledger.add(key, status="dropped", reason=drop.reason, detail=drop.detail[:300])
        return
    ledger.add(key, status="done", **fields)


def item_key(*parts: Any) -> str:
    """A ledger key built from parts (JSON, so names containing separators stay unambiguous)."""
    return json.dumps(list(parts), ensure_ascii=False)


def fingerprint_of(obj: Any) -> str:
    """What identifies an object's answers: its ``fingerprint`` attribute, else its class name."""
    fp = getattr(obj, "fingerprint", None)
    return str(fp) if fp else f"{type(obj).__module__}.{type(obj).__qualname__}"


def ledger_name(*parts: Any) -> str:
    """``progress-<hash>.jsonl``: a ledger per (stage config, backend, embedder...), so results made
    under other settings are never mixed in (the LLM cache still makes redoing them free)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"progress-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.jsonl"


async def run_bounded(items: Iterable[T], fn: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Await ``fn(item)`` for every item with at most ``limit`` running at once.

    The first exception cancels the remaining work and is re-raised as itself (not wrapped in an
    ExceptionGroup), so a permanent API error surfaces with its own message.
    """
    iterator = iter(items)  # shared by the workers; next() never awaits, so no lock is needed

    async def worker() -> None:
        for item in iterator:
            await fn(item)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, limit)):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
