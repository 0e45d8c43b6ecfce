"""Alignment losses as pure functions over per-sample denoising errors, and a small table of them.

Conventions (tested in ``tests/train/test_losses.py``):

* **Error.** ``err = mean over C,H,W of (prediction - target)^2`` computed in float32, one number per
  (instruction, image) combination and sample (:func:`per_sample_mse`). The target is the noise for
  epsilon prediction and ``alpha_t * eps - sigma_t * x0`` for v-prediction (the scheduler's
  ``get_velocity``); the trainer picks it from the scheduler's ``prediction_type``.
* **D.** ``D(x, y) = err_model(x, y) - err_ref(x, y)`` with the SAME noise and timestep for model and
  reference. ``D < 0``: the policy denoises (x, y) better than the reference does.
* **beta.** The coefficient that multiplies the error differences inside the log-sigmoid, i.e. the
  paper's ``beta * T * w(lambda_t)`` with constant weighting ``w`` (the default; a per-sample tensor
  may be passed to weight by timestep). The public Diffusion-DPO code writes
  ``-0.5 * beta_dpo * (...)``: its ``beta_dpo=5000`` is ``beta=2500`` here
  (:func:`beta_from_diffusion_dpo_code`).
* **Layouts.** The trainer evaluates the model on ``K`` (instruction, image) combinations per training
  item and hands each loss a ``(B, K)`` error tensor:

  - ``quad`` (one cross-validation sample): ``[x1, x1, x2, x2] x [y1, y2, y2, y1]``, i.e. columns
    ``(x1,y1), (x1,y2), (x2,y2), (x2,y1)``. Under x1, y1 wins; under x2, y2 wins.
  - ``pair`` (one triple ``(x, y_w, y_l)``): columns ``(x, y_w), (x, y_l)``.
  - ``single`` (one ``(x, y)`` to imitate): one column.

Cross-validation DPO (DESIGN.md part 3, the paper's Eq. 8 with its typo fixed)::

    L = -log sigmoid( -beta * ( (D(x1,y1) - D(x1,y2)) + (D(x2,y2) - D(x2,y1)) ) )

DPO-Positive anchor inside the log-sigmoid (``loss.dpop_lambda``, Pal et al. 2024, "Smaug", Eq. 3:
``-log sigmoid(beta * (log-ratio margin - lambda * max(0, log pi_ref(y_w) - log pi_theta(y_w))))``).
With ``log pi_theta(y) - log pi_ref(y) = -D`` (up to the constant absorbed in beta) the penalty is
``max(0, D_w)``: every triple's term becomes ``-log sigmoid(-beta * ((D_w - D_l) + lambda * max(0, D_w)))``;
CV-DPO adds both image triples' penalties inside its one log-sigmoid. ``lambda = 0`` is plain DPO.
(``loss.anchor_weight`` is the same hinge *outside* the log-sigmoid, added to the loss.)

Note on the "discarded" IOPO triples (one image, two instructions): inside ONE log-sigmoid they add
``(D(x1,y1) - D(x2,y1)) + (D(x2,y2) - D(x1,y2))``, which is algebraically the same sum as above, so
"keeping" them there would only double beta. The ablation therefore keeps them as four separate
triples, each in its own log-sigmoid (:func:`four_triple_dpo_loss`), as the IOPO four-triple form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from instructengine.train.config import LossConfig

__all__ = [
    "IMAGE_TRIPLES",
    "INSTRUCTION_TRIPLES",
    "LAYOUTS",
    "LOSSES",
    "LossSpec",
    "beta_from_diffusion_dpo_code",
    "cross_validation_dpo_loss",
    "diffusion_dpo_loss",
    "dpo_positive_penalty",
    "four_triple_dpo_loss",
    "mapo_loss",
    "orpo_loss",
    "per_sample_mse",
    "preference_metrics",
    "sft_loss",
    "per_sample_loss",
    "preferred_error",
    "preferred_excess",
]

Layout = Literal["quad", "pair", "single"]

#: layout -> (number of instruction slots, number of image slots, combos as (text slot, image slot))
LAYOUTS: dict[str, tuple[int, int, tuple[tuple[int, int], ...]]] = {
    "quad": (2, 2, ((0, 0), (0, 1), (1, 1), (1, 0))),  # (x1,y1) (x1,y2) (x2,y2) (x2,y1)
    "pair": (1, 2, ((0, 0), (0, 1))),  # (x,y_w) (x,y_l)
    "single": (1, 1, ((0, 0),)),  # (x,y)
}

#: quad columns (winner, loser) of the two image-preference triples: under x1 and under x2
IMAGE_TRIPLES: tuple[tuple[int, int], ...] = ((0, 1), (2, 3))
#: quad columns (winner, loser) of the two instruction-preference triples: under y1 and under y2
INSTRUCTION_TRIPLES: tuple[tuple[int, int], ...] = ((0, 3), (2, 1))


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every non-batch dimension, in float32: shape ``(B,)``."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def beta_from_diffusion_dpo_code(beta_dpo: float) -> float:
    """The ``beta`` of this module equivalent to the public Diffusion-DPO code's ``--beta_dpo``.

    That code computes ``-0.5 * beta_dpo * (model_diff - ref_diff)``; here it is ``-beta * (...)``.
    """
    return 0.5 * beta_dpo


def _check_errors(model_err: torch.Tensor, ref_err: torch.Tensor | None, columns: int, name: str) -> None:
    if model_err.ndim != 2 or model_err.shape[1] != columns:
        raise ValueError(f"{name}: model errors must have shape (B, {columns}), got {tuple(model_err.shape)}")
    if ref_err is not None and ref_err.shape != model_err.shape:
        raise ValueError(
            f"{name}: reference errors shape {tuple(ref_err.shape)} != model errors shape {tuple(model_err.shape)}"
        )


def dpo_positive_penalty(d_winner: torch.Tensor, dpop_lambda: float) -> torch.Tensor:
    """DPO-Positive's penalty in error units, ``lambda * max(0, D_w)``, added to ``D_w - D_l`` inside
    the log-sigmoid (zero, with zero gradient, while the policy denoises the winner no worse than the
    reference). Raises ValueError for a negative ``lambda``."""
    if dpop_lambda < 0:
        raise ValueError(f"dpop_lambda={dpop_lambda} must be >= 0")
    return dpop_lambda * torch.relu(d_winner)


def diffusion_dpo_loss(
    model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float | torch.Tensor,
    dpop_lambda: float = 0.0,
) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2023) on one triple: ``-log sigmoid(-beta * (D_w - D_l))``, shape (B,).

    ``dpop_lambda`` > 0: the DPO-Positive form ``-log sigmoid(-beta * (D_w - D_l + lambda * max(0, D_w)))``.
    """
    d_w = model_w - ref_w
    margin = d_w - (model_l - ref_l)
    if dpop_lambda:
        margin = margin + dpo_positive_penalty(d_w, dpop_lambda)
    return -F.logsigmoid(-beta * margin)


def cross_validation_dpo_loss(
    model_err: torch.Tensor, ref_err: torch.Tensor, beta: float | torch.Tensor, dpop_lambda: float = 0.0
) -> torch.Tensor:
    """Cross-validation DPO over a quad: both image triples inside one log-sigmoid, shape (B,).

    ``model_err``/``ref_err`` are ``(B, 4)`` in the quad column order (module docstring).
    ``dpop_lambda`` > 0 adds DPO-Positive's penalty of both winners, (x1, y1) and (x2, y2), inside it.
    """
    _check_errors(model_err, ref_err, 4, "cross_validation_dpo_loss")
    d = model_err - ref_err
    margin = (d[:, 0] - d[:, 1]) + (d[:, 2] - d[:, 3])
    if dpop_lambda:
        margin = margin + dpo_positive_penalty(d[:, 0], dpop_lambda) + dpo_positive_penalty(d[:, 2], dpop_lambda)
    return -F.logsigmoid(-beta * margin)


def four_triple_dpo_loss(model_err: torch.Tensor, ref_err: torch.Tensor, beta: float | torch.Tensor,
                         dpop_lambda: float = 0.0) -> torch.Tensor:
    """"Keep the discarded triples": mean of four Diffusion-DPO terms over a quad, shape (B,).

    The two image triples (x1: y1 > y2; x2: y2 > y1) plus the two instruction triples the paper
    discards (y1: x1 > x2; y2: x2 > x1), each in its own log-sigmoid (``dpop_lambda``: each with its
    winner's DPO-Positive penalty).
    """
    _check_errors(model_err, ref_err, 4, "four_triple_dpo_loss")
    d = model_err - ref_err
    terms = []
    for w, l in IMAGE_TRIPLES + INSTRUCTION_TRIPLES:
        margin = d[:, w] - d[:, l]
        if dpop_lambda:
            margin = margin + dpo_positive_penalty(d[:, w], dpop_lambda)
        terms.append(-F.logsigmoid(-beta * margin))
    return torch.stack(terms, dim=1).mean(dim=1)


def sft_loss(model_err: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the preferred images: the plain denoising error, shape (B,)."""
    return model_err.mean(dim=1)


def preferred_error(model_err: torch.Tensor, winner_columns: tuple[int, ...]) -> torch.Tensor:
    """The policy's mean denoising error over the preferred combinations (columns), shape (B,): the
    SFT-style regulariser ``loss.sft_weight`` adds to a DPO-family loss."""
    if not winner_columns:
        raise ValueError("preferred_error needs at least one winner column")
    return model_err[:, list(winner_columns)].mean(dim=1)


def _log_odds(err: torch.Tensor, likelihood_scale: float) -> torch.Tensor:
    # log p = -s * err stands in for the image log-likelihood; odds = p / (1 - p).
    log_p = -likelihood_scale * err.clamp_min(1e-12)
    return log_p - torch.log(-torch.expm1(log_p))


def orpo_loss(
    model_w: torch.Tensor, model_l: torch.Tensor, weight: float, likelihood_scale: float = 1.0
) -> torch.Tensor:
    """ORPO-style reference-free loss: SFT on the winner + ``weight`` * odds-ratio term, shape (B,).

    ``log odds(y) = log p - log(1 - p)`` with ``log p = -likelihood_scale * err``. For small errors the
    odds ratio is about ``err_l / err_w``, so the preference term is scale-free. (The diffusers
    ``diffusion_orpo`` research example instead uses ``logsigmoid(err_w - err_l)``, whose sign rewards
    a larger winner error; this function uses the ORPO paper's direction.)
    """
    ratio = -F.logsigmoid(_log_odds(model_w, likelihood_scale) - _log_odds(model_l, likelihood_scale))
    return model_w + weight * ratio


def mapo_loss(
    model_w: torch.Tensor,
    model_l: torch.Tensor,
    beta: float,
    temperature: float = 0.5,
    margin_scale: float = 1000.0,
) -> torch.Tensor:
    """MaPO-style reference-free loss (Hong et al. 2024): winner error minus a margin term, shape (B,).

    ``f(e) = z / (exp(z) - 1)`` with ``z = temperature * e`` is decreasing in the error;
    ``L = err_w - beta * log sigmoid(margin_scale * (f(err_w) - f(err_l)))`` (margin_scale = the number
    of training timesteps T in the public code).
    """

    def f(err: torch.Tensor) -> torch.Tensor:
        z = (temperature * err).clamp_min(1e-12)
        return z / torch.expm1(z)

    return model_w - beta * F.logsigmoid(margin_scale * (f(model_w) - f(model_l)))


# --------------------------------------------------------------------------------------------
# The table: name -> (layout, needs reference, per-sample function of (model_err, ref_err, cfg))
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """One entry of :data:`LOSSES`: what the loss consumes and how to compute it per sample."""

    layout: Layout
    needs_reference: bool
    fn: Callable[[torch.Tensor, torch.Tensor | None, "LossConfig"], torch.Tensor]
    #: (label, winner column, loser column) of the triples reported as implicit accuracy/margins
    triples: tuple[tuple[str, int, int], ...]
    summary: str

    @property
    def winner_columns(self) -> tuple[int, ...]:
        """The columns of the preferred (instruction, image) combinations, in order."""
        return tuple(sorted({w for _, w, _ in self.triples}))


_QUAD_TRIPLES = (("x1", 0, 1), ("x2", 2, 3))
_PAIR_TRIPLES = (("pair", 0, 1),)

LOSSES: dict[str, LossSpec] = {
    "cross_validation_dpo": LossSpec(
        "quad", True, lambda m, r, c: cross_validation_dpo_loss(m, r, c.beta, c.dpop_lambda), _QUAD_TRIPLES,
        "both image triples of a sample inside one log-sigmoid (InstructEngine)",
    ),
    "four_triple_dpo": LossSpec(
        "quad", True, lambda m, r, c: four_triple_dpo_loss(m, r, c.beta, c.dpop_lambda),
        _QUAD_TRIPLES + (("y1", 0, 3), ("y2", 2, 1)),
        "image triples + the discarded instruction triples, four log-sigmoids (IOPO four-triple form)",
    ),
    "diffusion_dpo": LossSpec(
        "pair", True, lambda m, r, c: diffusion_dpo_loss(m[:, 0], m[:, 1], r[:, 0], r[:, 1], c.beta, c.dpop_lambda),
        _PAIR_TRIPLES, "Diffusion-DPO on one (x, y_w, y_l) triple",
    ),
    "sft": LossSpec("single", False, lambda m, r, c: sft_loss(m), (), "denoising loss on preferred images"),
    "orpo": LossSpec(
        "pair", False, lambda m, r, c: orpo_loss(m[:, 0], m[:, 1], c.orpo_weight, c.orpo_likelihood_scale),
        _PAIR_TRIPLES, "reference-free: SFT + odds-ratio preference term",
    ),
    "mapo": LossSpec(
        "pair", False,
        lambda m, r, c: mapo_loss(m[:, 0], m[:, 1], c.mapo_beta, c.mapo_temperature, c.mapo_margin_scale),
        _PAIR_TRIPLES, "reference-free: SFT + margin term (MaPO)",
    ),
}


def preference_metrics(
    spec: LossSpec, model_err: torch.Tensor, ref_err: torch.Tensor | None, beta: float
) -> dict[str, float]:
    """Implicit accuracy and reward margin per triple, mean model/reference error of winners and losers.

    For a triple (w, l): implicit accuracy = fraction with ``D_w < D_l`` (``err_w < err_l`` without a
    reference); reward margin = mean of ``-beta * (D_w - D_l)``.
    """
    out: dict[str, float] = {}
    with torch.no_grad():
        m = model_err.detach().float()
        r = ref_err.detach().float() if ref_err is not None else None
        d = m - r if r is not None else m
        winners = sorted({w for _, w, _ in spec.triples}) or [0]
        losers = sorted({l for _, _, l in spec.triples})
        out["model_err_winner"] = m[:, winners].mean().item()
        if losers:
            out["model_err_loser"] = m[:, losers].mean().item()
        if r is not None:
            out["ref_err_winner"] = r[:, winners].mean().item()
            if losers:
                out["ref_err_loser"] = r[:, losers].mean().item()
        for label, w, l in spec.triples:
            gap = d[:, w] - d[:, l]
            out[f"implicit_acc_{label}"] = (gap < 0).float().mean().item()
            out[f"reward_margin_{label}"] = (-beta * gap).mean().item()
    return out


LOG2 = math.log(2.0)


def preferred_excess(model_err: torch.Tensor, ref_err: torch.Tensor, winner_columns: tuple[int, ...]) -> torch.Tensor:
    """How far the policy's error exceeds the reference's on the preferred combinations, hinged at 0
    and averaged over the columns, shape (B,): the DPO-Positive-style anchor ``loss.anchor_weight``
    adds (zero, with zero gradient, while the policy denoises its preferred images no worse than the
    reference; it only counters likelihood displacement and never pulls further)."""
    if not winner_columns:
        raise ValueError("preferred_excess needs at least one winner column")
    cols = list(winner_columns)
    return torch.relu(model_err[:, cols] - ref_err[:, cols]).mean(dim=1)


def per_sample_loss(spec: LossSpec, model_err: torch.Tensor, ref_err: torch.Tensor | None, cfg: "LossConfig") -> torch.Tensor:
    """A method's loss per sample, shape (B,): ``spec.fn`` plus, when ``cfg.sft_weight`` > 0, that
    weight times the policy's error on the preferred combinations (DPO + SFT regulariser), plus, when
    ``cfg.anchor_weight`` > 0, that weight times :func:`preferred_excess` (DPO + hinge anchor)."""
    out = spec.fn(model_err, ref_err, cfg)
    if getattr(cfg, "sft_weight", 0.0):
        out = out + cfg.sft_weight * preferred_error(model_err, spec.winner_columns)
    if getattr(cfg, "anchor_weight", 0.0):
        if ref_err is None:
            raise ValueError("loss.anchor_weight needs the reference's errors (a DPO-family method)")
        out = out + cfg.anchor_weight * preferred_excess(model_err, ref_err, spec.winner_columns)
    return out
