"""Scorers with one interface, ``score(images, prompts) -> np.ndarray`` (see :mod:`.base`).

Built-in names: pickscore, imagereward, hpsv2, clip, blip, aesthetic (the paper's six), ict, hp, ict_hp (ICT x HP)
and vqa (:mod:`instructengine.evaluate.vqa`); bundles register theirs (:mod:`instructengine.registry`).
The same scorers serve the data pipeline (best-of-N, baselines) and the evaluation harness.
Importing this package imports no model code; each factory imports what it needs.
"""

from instructengine.scorers.base import (
    Scorer,
    ScorerContext,
    ScorerFactory,
    available_scorers,
    build_scorer,
    check_batch,
    columns_of,
    register_scorer,
    score_columns,
)

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
