"""The scorer interface, the per-run model cache, and the registry of scorer factories.

A scorer is anything with::

    name: str                      # short id, e.g. "pickscore"
    columns: tuple[str, ...]       # optional: the metric columns it writes (default (name,))
    def score(self, images: list[PIL.Image.Image], prompts: list[str]) -> np.ndarray

``score`` returns one float per image (shape ``(n,)``), or ``(n, len(columns))`` for a scorer that
measures several things at once (e.g. an oracle with per-attribute accuracies). Images are RGB and
already decoded; prompt ``i`` belongs to image ``i``.

Scorers are built by *factories* ``factory(options: dict, context: ScorerContext) -> Scorer``.
Heavy imports (torch, transformers) happen inside factories. The :class:`ScorerContext` carries the
device, the dtype and a cache, so a model used by two scorers (CLIP ViT-L/14 for the CLIP score and
the aesthetic predictor) is loaded once per run, and its image features are computed once per batch.

Factories live in the one component registry (:mod:`instructengine.registry`, kind ``scorer``):
the built-in ones, those a bundle registers, or any import path ``"package.module:factory"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "Scorer",
    "ScorerContext",
    "ScorerFactory",
    "available_scorers",
    "build_scorer",
    "check_batch",
    "columns_of",
    "register_scorer",
    "score_columns",
]


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> np.ndarray: ...


def columns_of(scorer: Any) -> tuple[str, ...]:
    """A scorer's metric columns: its ``columns`` attribute, else ``(name,)``."""
    return tuple(getattr(scorer, "columns", None) or (scorer.name,))


@dataclass
class ScorerContext:
    """What every factory receives: where to run, in which dtype, and the per-run model cache."""

    device: str = "cpu"
    dtype: str = "float32"
    run_dir: str | None = None  # where scorers that call an LLM keep their cache and artifacts
    cache: dict[Any, Any] = field(default_factory=dict)

    def shared(self, key: Any, loader: Callable[[], Any]) -> Any:
        """Return ``cache[key]``, calling ``loader()`` the first time (one load per run)."""
        if key not in self.cache:
            self.cache[key] = loader()
        return self.cache[key]

    @property
    def torch_dtype(self):
        import torch

        try:
            return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]
        except KeyError:
            raise ValueError(f"scorer dtype {self.dtype!r} is not one of float32, float16, bfloat16") from None


ScorerFactory = Callable[[dict[str, Any], ScorerContext], Scorer]

def register_scorer(name: str, factory: ScorerFactory | str) -> None:
    """Make ``name`` usable in configs; ``factory`` is a callable or an ``"module:attr"`` path
    (:func:`instructengine.registry.register` with kind ``scorer``)."""
    from instructengine import registry

    registry.register("scorer", name, factory)


def available_scorers() -> list[str]:
    from instructengine import registry

    return registry.available("scorer")


def build_scorer(name: str, options: dict[str, Any] | None, context: ScorerContext) -> Scorer:
    """Build a registered scorer (or one named by ``"module:factory"``) with its options.

    Raises:
        ValueError: unknown name (the message lists the known ones), or a factory that does not
            return a scorer.
        instructengine.errors.DeviceError: ``context.device`` is CUDA on a machine without one.
        instructengine.errors.ModelLoadError: its weights could not be loaded (the message names
            the scorer and its options).
    """
    from instructengine import registry
    from instructengine.errors import loading, require_device

    require_device(f"device of scorer {name!r}", context.device)
    with loading(f"scorer {name!r} with options", dict(options or {}),
                 hint="give its weights as a local path in the scorer's options, or run where the Hub is reachable"):
        scorer = registry.instantiate("scorer", name, dict(options or {}), context, where="scorer")
    if not isinstance(scorer, Scorer):
        raise ValueError(f"scorer factory for {name!r} returned {type(scorer).__name__}, which lacks name/score")
    return scorer


def check_batch(name: str, images: Sequence[Any], prompts: Sequence[str]) -> None:
    """Raise ValueError unless images and prompts are non-empty and of equal length."""
    if len(images) != len(prompts):
        raise ValueError(f"{name}: got {len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    if len(images) == 0:
        raise ValueError(f"{name}: got an empty batch")


def score_columns(scorer: Scorer, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Call ``scorer.score`` and return ``{column: values}``, checking the shape it returned.

    NaN means "not measured for this item" (e.g. a VLM answer that could not be parsed) and is
    kept as NaN; the runner counts such items per column. Infinite values are an error.

    Raises:
        ValueError: the result is not (n,) or (n, len(columns)), or holds +-inf.
    """
    columns = columns_of(scorer)
    out = np.asarray(scorer.score(images, prompts), dtype=np.float64)
    n, k = len(images), len(columns)
    if out.shape == (n,) and k == 1:
        out = out[:, None]
    if out.shape != (n, k):
        raise ValueError(f"scorer {scorer.name!r} returned shape {out.shape}, expected ({n},) or ({n}, {k})")
    if np.isinf(out).any():
        raise ValueError(f"scorer {scorer.name!r} returned infinite values for {int(np.isinf(out).sum())} items")
    return {c: out[:, j] for j, c in enumerate(columns)}
