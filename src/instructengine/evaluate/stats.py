"""Aggregation statistics for the report: means, prompt-level bootstrap CIs, paired differences.

Images of one prompt (K seeds) are not independent samples, so confidence intervals resample
*prompts* (a cluster bootstrap): each prompt's images are first averaged, then prompts are drawn
with replacement. A difference between two models is bootstrapped the same way on per-prompt
differences, paired on (prompt, seed), which is far tighter than comparing two separate CIs.
NaN marks an item a scorer could not measure; it is left out of means and counted.

Power planning (:func:`required_sample_size`, :class:`VarianceComponents`): how many prompts, image
seeds and training seeds an ablation needs so that two arms a given distance apart are separated,
from variance components measured on earlier runs (docs/training.md, "Statistical power").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "Interval",
    "VarianceComponents",
    "bootstrap_mean",
    "normal_quantile",
    "per_prompt_means",
    "relative_change",
    "minimum_detectable_difference",
    "required_for_half_width",
    "required_sample_size",
]


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


# ----------------------------------------------------------------------------------------------
# power planning
# ----------------------------------------------------------------------------------------------


def normal_quantile(p: float) -> float:
    """The standard normal quantile ``z_p`` (``normal_quantile(0.975) = 1.95996...``).

    Raises:
        ValueError: ``p`` outside (0, 1).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile: p={p} must lie in (0, 1)")
    return NormalDist().inv_cdf(p)


def required_sample_size(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8,
                         two_sided: bool = True) -> int:
    """Pairs needed for a paired difference of true size ``delta`` to be significant at level ``alpha``
    with probability ``power``, when one pair's difference has standard deviation ``sd``.

    The normal closed form ``n = ceil(((z_{1-alpha/2} + z_{power}) * sd / delta)^2)`` (``z_{1-alpha}``
    one-sided), i.e. a z-test with known SD; a t-test needs one or two pairs more at small n.
    ``sd`` and ``delta`` must be in the same unit (e.g. both in points of exact match).

    Raises:
        ValueError: ``sd`` < 0, ``delta`` == 0, ``alpha`` or ``power`` outside (0, 1).
    """
    if sd < 0 or not math.isfinite(sd):
        raise ValueError(f"required_sample_size: sd={sd} must be a finite number >= 0")
    if delta == 0 or not math.isfinite(delta):
        raise ValueError(f"required_sample_size: delta={delta} must be a finite non-zero difference")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"required_sample_size: alpha={alpha} and power={power} must lie in (0, 1)")
    z_alpha = normal_quantile(1 - alpha / 2 if two_sided else 1 - alpha)
    n = ((z_alpha + normal_quantile(power)) * sd / abs(delta)) ** 2
    return max(1, math.ceil(n - 1e-9))


def required_for_half_width(sd: float, half_width: float, confidence: float = 0.95) -> int:
    """Pairs needed for a normal ``confidence`` interval of a mean (or paired difference) with
    per-pair standard deviation ``sd`` to have at most ``half_width``: ``ceil((z * sd / hw)^2)``.

    Raises:
        ValueError: ``sd`` < 0, ``half_width`` <= 0, ``confidence`` outside (0, 1).
    """
    if sd < 0 or not math.isfinite(sd):
        raise ValueError(f"required_for_half_width: sd={sd} must be a finite number >= 0")
    if not half_width > 0:
        raise ValueError(f"required_for_half_width: half_width={half_width} must be > 0")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"required_for_half_width: confidence={confidence} must lie in (0, 1)")
    z = normal_quantile(0.5 + confidence / 2)
    return max(1, math.ceil((z * sd / half_width) ** 2 - 1e-9))


def minimum_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided level-``alpha`` test detects with probability
    ``power`` when its estimate has standard error ``se``: ``(z_{1-alpha/2} + z_{power}) * se``."""
    if se < 0:
        raise ValueError(f"minimum_detectable_difference: se={se} must be >= 0")
    return (normal_quantile(1 - alpha / 2) + normal_quantile(power)) * se


@dataclass(frozen=True)
class VarianceComponents:
    """Variance components of an arm-minus-base difference in an ablation (one unit, e.g. points).

    Model of one image's paired difference: ``arm[s, p, k] - base[p, k]`` with
    ``arm[s, p, k] = m_p + b_s + u[s, p, k]`` and ``base[p, k] = m'_p + v[p, k]``:

    * ``prompt``: variance over prompts of the true per-prompt difference ``m_p - m'_p``;
    * ``seed``: variance of the training-seed effect ``b_s`` (the same seed shifts every prompt);
    * ``arm_noise`` / ``base_noise``: variance of one image around its prompt's mean (image seed
      noise) for the arm and for the base model.

    The mean difference over P prompts, S training seeds and K image seeds per prompt (the base
    images shared by every seed of the arm, as the ablation runner pairs them) then has variance
    ``prompt/P + seed/S + arm_noise/(P S K) + base_noise/(P K)``.
    """

    prompt: float
    seed: float
    arm_noise: float
    base_noise: float

    @classmethod
    def estimate(cls, arm: np.ndarray, base: np.ndarray) -> "VarianceComponents":
        """Method-of-moments estimate from an arm's scores ``(S, P, K)`` and the base's ``(P, K)``
        (the same prompts and image seeds, in the same order; S >= 2, P >= 2). Negative estimates of
        ``prompt`` and ``seed`` are set to 0.

        With K >= 2 the noise terms are the mean within-cell variances over image seeds. With K = 1
        the arm's noise is the residual variance of the additive (seed + prompt) model of its scores,
        and the base's noise cannot be told apart from the prompt term: it is folded into ``prompt``
        (``base_noise = 0``), which keeps ``se`` right at K = 1 and conservative for K > 1.

        Raises:
            ValueError: shapes that do not match, S < 2, P < 2, or NaN in the input.
        """
        arm = np.asarray(arm, dtype=np.float64)
        base = np.asarray(base, dtype=np.float64)
        if arm.ndim != 3 or base.ndim != 2 or arm.shape[1:] != base.shape:
            raise ValueError(f"VarianceComponents.estimate: arm must be (S, P, K) and base (P, K) with the same "
                             f"P, K; got {arm.shape} and {base.shape}")
        s, p, k = arm.shape
        if s < 2 or p < 2:
            raise ValueError(f"VarianceComponents.estimate: needs >= 2 training seeds and prompts; got S={s}, P={p}, K={k}")
        if np.isnan(arm).any() or np.isnan(base).any():
            raise ValueError("VarianceComponents.estimate: NaN in the scores (drop unmeasured prompts first)")
        if k >= 2:
            arm_noise = float(arm.var(axis=2, ddof=1).mean())
            base_noise = float(base.var(axis=1, ddof=1).mean())
        else:
            cell = arm[:, :, 0]
            resid = cell - cell.mean(axis=1, keepdims=True) - cell.mean(axis=0, keepdims=True) + cell.mean()
            arm_noise = float((resid ** 2).sum() / ((s - 1) * (p - 1)))
            base_noise = 0.0
        seed_means = arm.mean(axis=(1, 2))
        seed = max(0.0, float(seed_means.var(ddof=1)) - arm_noise / (p * k))
        per_prompt = arm.mean(axis=(0, 2)) - base.mean(axis=1)
        prompt = max(0.0, float(per_prompt.var(ddof=1)) - arm_noise / (s * k) - base_noise / k)
        return cls(prompt=prompt, seed=seed, arm_noise=arm_noise, base_noise=base_noise)

    def se(self, n_prompts: int, n_seeds: int, n_images: int) -> float:
        """Standard error of the mean difference over P prompts, S training seeds, K image seeds."""
        if min(n_prompts, n_seeds, n_images) < 1:
            raise ValueError(f"se: counts must be >= 1, got P={n_prompts}, S={n_seeds}, K={n_images}")
        return math.sqrt(self.prompt / n_prompts + self.seed / n_seeds
                         + self.arm_noise / (n_prompts * n_seeds * n_images) + self.base_noise / (n_prompts * n_images))

    def prompts_needed(self, half_width: float, n_seeds: int, n_images: int, confidence: float = 0.95) -> int | None:
        """The fewest prompts for a normal interval of at most ``half_width`` with S seeds and K
        image seeds, or None when the seed term alone is wider (more training seeds are needed)."""
        z = normal_quantile(0.5 + confidence / 2)
        budget = (half_width / z) ** 2 - self.seed / n_seeds
        if budget <= 0:
            return None
        per_prompt = self.prompt + self.arm_noise / (n_seeds * n_images) + self.base_noise / n_images
        return max(1, math.ceil(per_prompt / budget - 1e-9))
