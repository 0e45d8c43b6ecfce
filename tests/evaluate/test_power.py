"""Power planning in instructengine.evaluate.stats, against textbook and hand-computed values."""

import math

import numpy as np
import pytest

from instructengine.evaluate.stats import (
    VarianceComponents,
    minimum_detectable_difference,
    normal_quantile,
    required_for_half_width,
    required_sample_size,
)


def test_normal_quantiles_match_the_tables():
    # standard normal table values
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert normal_quantile(0.9) == pytest.approx(1.281552, abs=1e-6)
    assert normal_quantile(0.95) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError, match="p=1"):
        normal_quantile(1.0)


@pytest.mark.parametrize(
    "sd, delta, alpha, power, two_sided, expected",
    [
        # (1.959964 + 0.841621)^2 / 0.5^2 = 31.40 -> 32 (the classic "d = 0.5, 80% power" z-test figure)
        (1.0, 0.5, 0.05, 0.8, True, 32),
        # (1.959964 + 0.841621)^2 / 0.2^2 = 196.2 -> 197
        (1.0, 0.2, 0.05, 0.8, True, 197),
        # 90% power: (1.959964 + 1.281552)^2 / 0.25 = 42.03 -> 43
        (1.0, 0.5, 0.05, 0.9, True, 43),
        # one-sided 5%: (1.644854 + 0.841621)^2 / 0.25 = 24.73 -> 25
        (1.0, 0.5, 0.05, 0.8, False, 25),
        # in points: sd 20, delta 2 -> 7.8489 * 100 = 784.9 -> 785; the sign of delta does not matter
        (20.0, -2.0, 0.05, 0.8, True, 785),
    ],
)
def test_required_sample_size_matches_hand_computed_values(sd, delta, alpha, power, two_sided, expected):
    assert required_sample_size(sd, delta, alpha, power, two_sided) == expected


def test_required_sample_size_rejects_bad_input():
    with pytest.raises(ValueError, match="delta=0"):
        required_sample_size(1.0, 0.0)
    with pytest.raises(ValueError, match="power=1.5"):
        required_sample_size(1.0, 0.5, power=1.5)
    with pytest.raises(ValueError, match="sd=-1"):
        required_sample_size(-1.0, 0.5)


def test_half_width_and_detectable_difference():
    # (1.959964 * 10 / 1.5)^2 = 170.7 -> 171 pairs for a +-1.5 interval at sd 10
    assert required_for_half_width(10.0, 1.5) == 171
    # 99%: z = 2.575829 -> (2.575829 * 10 / 1.5)^2 = 294.9 -> 295
    assert required_for_half_width(10.0, 1.5, confidence=0.99) == 295
    assert minimum_detectable_difference(1.0) == pytest.approx(2.801585, abs=1e-6)
    # consistency: at n from required_sample_size, the detectable difference is <= delta
    n = required_sample_size(20.0, 2.0)
    assert minimum_detectable_difference(20.0 / math.sqrt(n)) <= 2.0 < minimum_detectable_difference(20.0 / math.sqrt(n - 1))


def test_variance_components_on_a_hand_made_table():
    # 2 seeds x 2 prompts x 2 image seeds; base (2 prompts x 2 image seeds)
    arm = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    base = np.array([[0.0, 0.0], [1.0, 0.0]])
    vc = VarianceComponents.estimate(arm, base)
    # within-cell variances of the arm: 0.5, 0, 0, 0.5 -> mean 0.25; base: 0, 0.5 -> 0.25
    assert vc.arm_noise == pytest.approx(0.25)
    assert vc.base_noise == pytest.approx(0.25)
    # seed means 0.75, 0.25 -> variance 0.125, minus 0.25 / (2 * 2) = 0.0625
    assert vc.seed == pytest.approx(0.0625)
    # per-prompt differences: (0.25 - 0) = 0.25 and (0.75 - 0.5) = 0.25 -> variance 0 -> clipped at 0
    assert vc.prompt == 0.0
    # se = sqrt(0/2 + 0.0625/2 + 0.25/8 + 0.25/4) = sqrt(0.125)
    assert vc.se(2, 2, 2) == pytest.approx(math.sqrt(0.125))


def test_variance_components_recover_simulated_truth_and_predict_the_spread():
    rng = np.random.default_rng(0)
    truth = VarianceComponents(prompt=0.04, seed=0.0009, arm_noise=0.2, base_noise=0.15)
    s, p, k = 6, 3000, 4

    def draw():
        m = rng.normal(0, math.sqrt(truth.prompt), p)
        b = rng.normal(0, math.sqrt(truth.seed), s)
        arm = m[None, :, None] + b[:, None, None] + rng.normal(0, math.sqrt(truth.arm_noise), (s, p, k))
        base = rng.normal(0, math.sqrt(truth.base_noise), (p, k))
        return arm, base

    vc = VarianceComponents.estimate(*draw())
    assert vc.arm_noise == pytest.approx(truth.arm_noise, rel=0.03)
    assert vc.base_noise == pytest.approx(truth.base_noise, rel=0.03)
    assert vc.prompt == pytest.approx(truth.prompt, rel=0.15)
    assert vc.seed == pytest.approx(truth.seed, abs=0.0015)
    # the formula's se predicts the spread of the mean difference over repeated experiments
    s, p, k = 3, 200, 3
    diffs = []
    for _ in range(400):
        m = rng.normal(0, math.sqrt(truth.prompt), p)
        b = rng.normal(0, math.sqrt(truth.seed), s)
        arm = m[None, :, None] + b[:, None, None] + rng.normal(0, math.sqrt(truth.arm_noise), (s, p, k))
        base = rng.normal(0, math.sqrt(truth.base_noise), (p, k))
        diffs.append(arm.mean() - base.mean())
    assert np.std(diffs, ddof=1) == pytest.approx(truth.se(p, s, k), rel=0.12)


def test_prompts_needed_meets_the_half_width_and_says_when_seeds_are_the_limit():
    vc = VarianceComponents(prompt=0.03, seed=0.0001, arm_noise=0.2, base_noise=0.2)
    n = vc.prompts_needed(0.015, n_seeds=3, n_images=3)
    assert n is not None
    z = normal_quantile(0.975)
    assert z * vc.se(n, 3, 3) <= 0.015 < z * vc.se(n - 1, 3, 3)
    # a seed variance whose term alone exceeds the budget: no number of prompts suffices
    assert VarianceComponents(0.03, 0.0005, 0.2, 0.2).prompts_needed(0.015, n_seeds=2, n_images=3) is None
    with pytest.raises(ValueError, match="S=1"):
        VarianceComponents.estimate(np.zeros((1, 3, 2)), np.zeros((3, 2)))


def test_one_image_seed_folds_the_base_noise_into_the_prompt_term():
    rng = np.random.default_rng(4)
    truth = VarianceComponents(prompt=0.04, seed=0.0009, arm_noise=0.2, base_noise=0.15)
    s, p = 60, 2000  # many seeds: the seed variance's estimate has S - 1 degrees of freedom
    m = rng.normal(0, math.sqrt(truth.prompt), p)
    b = rng.normal(0, math.sqrt(truth.seed), s)
    arm = m[None, :, None] + b[:, None, None] + rng.normal(0, math.sqrt(truth.arm_noise), (s, p, 1))
    base = rng.normal(0, math.sqrt(truth.base_noise), (p, 1))
    vc = VarianceComponents.estimate(arm, base)
    assert vc.base_noise == 0.0
    assert vc.arm_noise == pytest.approx(truth.arm_noise, rel=0.05)
    assert vc.prompt == pytest.approx(truth.prompt + truth.base_noise, rel=0.1)
    assert vc.se(750, 3, 1) == pytest.approx(truth.se(750, 3, 1), rel=0.1)
