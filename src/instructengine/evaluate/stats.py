"""Aggregation statistics for the report: means, prompt-level bootstrap CIs, paired differences.

Images of one prompt (K seeds) are not independent samples, so confidence intervals resample
*prompts* (a cluster bootstrap): each prompt's images are first averaged, then prompts are drawn
with replacement. A difference between two models is bootstrapped the same way on per-prompt
differences, paired on (prompt, seed), which is far tighter than comparing two separate CIs.
NaN marks an item a scorer could not measure; it is left out of means and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "per_prompt_means", "relative_change"]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n_prompts: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def per_prompt_means(prompt_index: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique prompt ids, nan-mean of the values of each prompt); prompts with only NaN are dropped."""
    prompt_index = np.asarray(prompt_index)
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    ids, inverse = np.unique(prompt_index[ok], return_inverse=True)
    sums = np.bincount(inverse, weights=values[ok], minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    return ids, sums / np.maximum(counts, 1)


def bootstrap_mean(per_prompt: np.ndarray, samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean of per-prompt values with a percentile bootstrap interval over prompts.

    Raises:
        ValueError: empty input, ``samples`` < 1, or ``confidence`` outside (0, 1).
    """
    x = np.asarray(per_prompt, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean: no values (every item NaN or an empty table)")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"bootstrap_mean: samples={samples} must be >= 1 and confidence={confidence} in (0, 1)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def relative_change(value: float, base: float) -> float:
    """Percent change of ``value`` over ``base`` (the paper's "+10.53%": 100 * (v - b) / |b|); NaN if b == 0."""
    if base == 0 or np.isnan(base) or np.isnan(value):
        return float("nan")
    return 100.0 * (value - base) / abs(base)
