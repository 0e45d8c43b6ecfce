"""The method table: a training method = a loss (or ReFL) + where its training items come from.

Adding a method is one line here (and, for a new loss, one entry in ``losses.LOSSES``); the trainer
looks the method up, it never branches on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["METHODS", "Method"]


@dataclass(frozen=True)
class Method:
    """A training method.

    Attributes:
        loss: key of ``instructengine.train.losses.LOSSES`` (None for ReFL, which has its own step).
        source: 'samples' (the cross-validation table ``samples.parquet``) or 'candidates' (a table of N
            scored images per prompt; best and worst are picked per prompt).
        step: 'preference' (denoising errors of (instruction, image) combinations) or 'refl'.
    """

    loss: str | None
    source: Literal["samples", "candidates"]
    step: Literal["preference", "refl"]
    summary: str

    @property
    def layout(self) -> str:
        from instructengine.train.losses import LOSSES

        return LOSSES[self.loss].layout if self.loss else "prompt"


METHODS: dict[str, Method] = {
    "cv_dpo": Method("cross_validation_dpo", "samples", "preference",
                     "cross-validation DPO over (x1, y1, x2, y2) samples (InstructEngine)"),
    "diffusion_dpo": Method("diffusion_dpo", "samples", "preference",
                            "Diffusion-DPO with each sample's two triples as independent pairs (w/o cross-val)"),
    "four_triple_dpo": Method("four_triple_dpo", "samples", "preference",
                              "keep the discarded (image-fixed) triples: IOPO four-triple form"),
    "sft": Method("sft", "samples", "preference", "fine-tune on the preferred (x1, y1) and (x2, y2) pairs"),
    "orpo": Method("orpo", "samples", "preference", "ORPO-style reference-free objective on the triples"),
    "mapo": Method("mapo", "samples", "preference", "MaPO-style reference-free objective on the triples"),
    "reward_dpo": Method("diffusion_dpo", "candidates", "preference",
                         "Diffusion-DPO on reward-picked best/worst of N candidates per prompt"),
    "refl": Method(None, "samples", "refl",
                   "ReFL: reward back-propagation at a random late sampling step (timestep value, not index)"),
}
