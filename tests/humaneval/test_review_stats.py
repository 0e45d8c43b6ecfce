import math

import numpy as np
import pytest

from instructengine.humaneval.stats import bootstrap_win_rate, bradley_terry, krippendorff_alpha_nominal


def test_krippendorff_reference_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", nominal example with
    # missing values: 4 coders, 12 units, alpha = 0.743.
    n = None
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3]
    c = [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]
    assert krippendorff_alpha_nominal(list(zip(a, b, c, d))) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_perfect_agreement_and_undefined():
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b", "b"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]))  # no variation at all
    assert math.isnan(krippendorff_alpha_nominal([["a"], ["b"]]))  # nothing pairable


def test_krippendorff_systematic_disagreement_is_negative():
    assert krippendorff_alpha_nominal([["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]) < 0


def test_bradley_terry_two_systems_closed_form():
    p = bradley_terry(np.array([[0.0, 30.0], [10.0, 0.0]]), prior=0)
    assert p[0] / (p[0] + p[1]) == pytest.approx(0.75, abs=1e-8)
    assert np.prod(p) == pytest.approx(1.0)


def test_bradley_terry_recovers_strengths():
    rng = np.random.default_rng(1)
    true = np.array([4.0, 2.0, 1.0, 0.5])
    w = np.zeros((4, 4))
    for i in range(4):
        for j in range(i + 1, 4):
            k = rng.binomial(4000, true[i] / (true[i] + true[j]))
            w[i, j], w[j, i] = k, 4000 - k
    p = bradley_terry(w, prior=0)
    assert list(np.argsort(-p)) == [0, 1, 2, 3]
    np.testing.assert_allclose(p / p[3], true / true[3], rtol=0.08)


def test_bradley_terry_never_winning_system_stays_finite():
    w = np.array([[0, 5, 5], [0, 0, 3], [0, 2, 0]], dtype=float)
    p = bradley_terry(w)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
    assert p[0] > p[1] > 0 and p[0] > p[2]
    with pytest.raises(ValueError, match="square"):
        bradley_terry(np.zeros((2, 3)))


def test_bootstrap_interval_matches_normal_approximation_for_iid_votes():
    rng = np.random.default_rng(0)
    scores = (rng.random(2000) < 0.6).astype(float)
    rate, lo, hi = bootstrap_win_rate(scores, n_boot=4000, seed=1)
    assert lo < rate < hi
    se = math.sqrt(rate * (1 - rate) / len(scores))
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_clusters_widen_interval_for_correlated_votes():
    # 40 prompts x 5 identical votes each: only 40 independent observations, not 200
    rng = np.random.default_rng(2)
    per_prompt = (rng.random(40) < 0.5).astype(float)
    scores = np.repeat(per_prompt, 5)
    clusters = np.repeat(np.arange(40), 5)
    _, lo_c, hi_c = bootstrap_win_rate(scores, clusters, seed=0)
    _, lo_i, hi_i = bootstrap_win_rate(scores, None, seed=0)
    assert (hi_c - lo_c) > 1.8 * (hi_i - lo_i)


def test_bootstrap_degenerate_and_bad_input():
    assert bootstrap_win_rate([1.0] * 10) == (1.0, 1.0, 1.0)
    assert bootstrap_win_rate([0.5] * 4)[0] == 0.5
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_win_rate([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bootstrap_win_rate([2.0])
