"""The five-layer MLP head shared by the LAION aesthetic predictor, ImageReward and ICT/HP's HP model.

All three official codes define the same ``nn.Sequential`` (improved-aesthetic-predictor's
``simple_inference.py``, ImageReward's ``ImageReward.py``, ICTHP's ``trainer/eval/eval.py``):
``Linear(d, h) Dropout Linear(h, 128) Dropout Linear(128, 64) Dropout Linear(64, 16) Linear(16, 1)``
with no activations, so checkpoint keys are ``layers.{0,2,4,6,7}.{weight,bias}``. The sizes are read
from the checkpoint, so one class loads all three (and tiny test heads).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

_LINEAR_INDICES = (0, 2, 4, 6, 7)
_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


class RewardMLP(nn.Module):
    """``layers``: Linear/Dropout stack with keys ``layers.{0,2,4,6,7}``; eval mode = no dropout."""

    def __init__(self, sizes: tuple[int, int, int, int, int, int]):
        super().__init__()
        mods: list[nn.Module] = []
        li = 0
        for idx in range(8):
            if idx in _DROPOUTS:
                mods.append(nn.Dropout(_DROPOUTS[idx]))
            else:
                mods.append(nn.Linear(sizes[li], sizes[li + 1]))
                li += 1
        self.layers = nn.Sequential(*mods)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Any], what: str = "MLP head") -> "RewardMLP":
        """Build and load from ``layers.{i}.weight/bias`` keys (an optional ``mlp.`` prefix is removed).

        Raises:
            ValueError: keys missing, or layer sizes that do not chain.
        """
        sd = {k[4:] if k.startswith("mlp.") else k: v for k, v in sd.items()}
        need = [f"layers.{i}.{p}" for i in _LINEAR_INDICES for p in ("weight", "bias")]
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"{what}: checkpoint lacks {missing[:4]}; expected keys layers.{{0,2,4,6,7}}.weight/bias")
        shapes = [tuple(sd[f"layers.{i}.weight"].shape) for i in _LINEAR_INDICES]
        sizes = (shapes[0][1],) + tuple(s[0] for s in shapes)
        for (out_prev, _), (_, in_next) in zip(shapes, shapes[1:]):
            if out_prev != in_next:
                raise ValueError(f"{what}: layer sizes do not chain: {shapes}")
        if sizes[-1] != 1:
            raise ValueError(f"{what}: last layer has {sizes[-1]} outputs, expected 1")
        head = cls(sizes)  # type: ignore[arg-type]
        head.load_state_dict({k: sd[k] for k in need})
        return head.eval()
