"""Statistics of pairwise human judgements: bootstrap win rates, Bradley-Terry, Krippendorff's alpha.

Pure numpy functions over plain arrays, tested on hand-made data.

Conventions:
* a vote's *score* for system A against B is 1 (A preferred), 0 (B preferred) or 0.5 (tie or
  both bad); the win rate is the mean score, i.e. ties count as half wins;
* bootstrap intervals resample *clusters* (prompts), not single votes, because the votes of
  several annotators (and seeds) on one prompt are not independent;
* Bradley-Terry strengths are fitted with Hunter's (2004) MM updates on win counts where a tie
  adds half a win to each side.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

__all__ = ["bootstrap_win_rate", "bradley_terry", "krippendorff_alpha_nominal"]


def bootstrap_win_rate(
    scores: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(win rate, lower, upper): the mean score and a percentile bootstrap interval.

    ``clusters`` groups votes that must be resampled together (e.g. the prompt); None resamples
    single votes. Raises ValueError on an empty input or scores outside [0, 1].
    """
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        raise ValueError("bootstrap_win_rate needs at least one vote")
    if np.any((s < 0) | (s > 1)):
        raise ValueError("scores must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    point = float(s.mean())
    if clusters is None:
        sums, counts = s, np.ones_like(s)
    else:
        if len(clusters) != s.size:
            raise ValueError(f"clusters has {len(clusters)} entries for {s.size} scores")
        _, inv = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
        sums = np.bincount(inv, weights=s)
        counts = np.bincount(inv).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sums.size, size=(n_boot, sums.size))
    rates = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(rates, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def bradley_terry(wins: np.ndarray, prior: float = 0.1, max_iter: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry strengths ``p`` (geometric mean 1) from ``wins[i, j]`` = times i beat j.

    Ties should be entered as half a win to each side. ``prior`` adds that many virtual wins
    each way to every pair that was compared, so a system that never won keeps a finite
    strength (set 0 for the plain maximum-likelihood fit). P(i beats j) = p_i / (p_i + p_j).
    """
    w = np.asarray(wins, dtype=float)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"wins must be a square matrix, got shape {w.shape}")
    if np.any(w < 0):
        raise ValueError("wins must be non-negative")
    k = w.shape[0]
    w = w.copy()
    np.fill_diagonal(w, 0.0)
    n = w + w.T
    if prior > 0:
        w = w + prior * (n > 0)
        n = w + w.T
    total_wins = w.sum(axis=1)
    p = np.ones(k)
    for _ in range(max_iter):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), p)
        new = np.maximum(new, 1e-300)
        new = new / np.exp(np.mean(np.log(new)))
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return p


def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data.

    ``units``: one sequence of values per unit (item), one value per coder who judged it (None
    or missing = not judged). Units with fewer than two values are not pairable and ignored.
    Returns nan when fewer than two pairable values exist or all values are the same category
    in every unit (no variation: alpha is undefined).
    """
    values = sorted({v for u in units for v in u if v is not None}, key=str)
    index = {v: i for i, v in enumerate(values)}
    q = len(values)
    o = np.zeros((q, q))
    for u in units:
        vals = [index[v] for v in u if v is not None]
        m = len(vals)
        if m < 2:
            continue
        counts = np.bincount(vals, minlength=q).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n < 2:
        return float("nan")
    d_o = n - np.trace(o)
    d_e = (n * n - (n_c**2).sum()) / (n - 1)
    if d_e == 0:
        return float("nan")
    return float(1.0 - d_o / d_e)
