"""Scorers with one interface, ``score(images, prompts) -> np.ndarray`` (see :mod:`.base`).

Built-in names: pickscore, imagereward, hpsv2, clip, blip, aesthetic (the paper's six), ict, hp,
ict_hp (ICT x HP), and vqa; ShapesWorld's shapes_oracle, shapes_clip and shapes_aesthetic. Importing this package imports
no model code; each factory imports what it needs.
"""

from instructengine.evaluate.scorers.base import (
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
