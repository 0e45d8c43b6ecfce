import numpy as np
import pytest

from instructengine.humaneval.results import compute_results, outcome, votes_csv, winrate_chart


def row(comp, ann, a, b, a_on_left, choice, prompt=0, **crit):
    left, right = (a, b) if a_on_left else (b, a)
    r = {"status": "active", "comparison_id": comp, "annotator": ann, "system_a": a, "system_b": b,
         "left_system": left, "right_system": right, "choice": choice, "prompt_index": prompt}
    r.update({f"criterion_{k}": v for k, v in crit.items()})
    return r


def test_outcome_uses_side_assignment():
    assert outcome("left", True) == "a" and outcome("left", False) == "b"
    assert outcome("right", True) == "b" and outcome("right", False) == "a"
    assert outcome("tie", False) == "tie" and outcome("both_bad", True) == "both_bad"


def test_counts_win_rate_and_criteria():
    rows = [
        row(1, "x", "A", "B", True, "left", 0, realism="right"),    # A wins
        row(1, "y", "A", "B", False, "right", 0, realism="left"),   # A wins (A on the right)
        row(2, "x", "A", "B", False, "left", 1, realism="tie"),     # B wins
        row(2, "y", "A", "B", True, "tie", 1, realism="tie"),
        row(3, "x", "A", "B", True, "both_bad", 2, realism=None),
        {**row(3, "y", "A", "B", True, "left", 2), "status": "undone"},  # ignored
    ]
    res = compute_results(rows, ["A", "B"], ["realism"], n_boot=200)
    (p,) = res["criteria"]["overall"]["pairs"]
    assert (p["n"], p["wins"], p["losses"], p["ties"], p["both_bad"]) == (5, 2, 1, 1, 1)
    assert p["win_rate"] == pytest.approx((2 + 0.5 * 2) / 5)
    assert p["ci_low"] <= p["win_rate"] <= p["ci_high"]
    (r,) = res["criteria"]["realism"]["pairs"]
    assert (r["n"], r["wins"], r["losses"], r["ties"]) == (4, 0, 2, 2)
    # pairable units: comparison 1 (A, A) and 2 (B, tie); comparison 3 has one active vote.
    # coincidences o[A,A]=2, o[B,tie]=o[tie,B]=1; n=4 -> alpha = 1 - 2 / ((16 - 6) / 3) = 0.4
    agreement = res["criteria"]["overall"]["agreement"]
    assert (agreement["units"], agreement["values"]) == (2, 4)
    assert agreement["krippendorff_alpha"] == pytest.approx(0.4)
    assert res["n_votes"] == 5


def test_bradley_terry_only_with_more_than_two_systems():
    rows = []
    k = 0
    for a, b, wins_a, n in (("A", "B", 8, 10), ("B", "C", 7, 10), ("A", "C", 9, 10)):
        for i in range(n):
            rows.append(row(k, "x", a, b, bool(i % 2), ("left" if i % 2 else "right") if i < wins_a else ("right" if i % 2 else "left"), k))
            k += 1
    res = compute_results(rows, ["A", "B", "C"], [], n_boot=200)
    bt = res["criteria"]["overall"]["bradley_terry"]
    assert [b["system"] for b in bt] == ["A", "B", "C"] and bt[0]["rank"] == 1
    assert np.prod([b["strength"] for b in bt]) == pytest.approx(1.0)
    wr = {(p["system_a"], p["system_b"]): p["win_rate"] for p in res["criteria"]["overall"]["pairs"]}
    assert wr == {("A", "B"): 0.8, ("B", "C"): 0.7, ("A", "C"): 0.9}
    assert compute_results(rows[:10], ["A", "B"], [], n_boot=200)["criteria"]["overall"]["bradley_terry"] is None


def test_requested_pairs_without_votes_are_listed_and_charted(tmp_path):
    res = compute_results([], ["A", "B"], ["realism"], pairs=[("A", "B")], n_boot=100)
    p = res["criteria"]["overall"]["pairs"][0]
    assert p["n"] == 0 and p["win_rate"] is None
    png = winrate_chart(res, tmp_path / "c.png")
    assert png[:4] == b"\x89PNG" and (tmp_path / "c.png").read_bytes() == png


def test_csv_neutralises_formulas():
    r = row(1, "=cmd|' /C calc'!A0", "A", "B", True, "left")
    r["prompt"] = "+SUM(1,2)"
    text = votes_csv([r], [])
    assert "'=cmd" in text and "'+SUM" in text and "\n=" not in text and ",=" not in text
