"""The ablation's forest plot: its rows from summary.json-shaped dicts, by hand, and a real PNG."""

import io

import pytest

from instructengine.experiments.ablation_plot import difference_rows, plot_differences

SUMMARY = {
    "base": {"exact": {"mean": 0.2, "ci95": [0.15, 0.25], "binary": True}},
    "cv": {"exact": {"mean": 0.23, "diff": 0.03, "diff_ci95": [0.01, 0.05], "binary": True}},
    "sft": {"exact": {"mean": 0.19, "diff": -0.01, "diff_ci95": [-0.03, 0.012], "binary": True},
            "share": {"mean": 0.5, "diff": 0.02, "diff_ci95": [0.0, 0.04], "binary": False}},
    "only_share": {"share": {"mean": 0.4, "diff": 0.1, "diff_ci95": [0.05, 0.15], "binary": False}},
}
CONTRASTS = {"cv - sft": {"a": "cv", "b": "sft", "diff": 0.04, "diff_ci95": [0.02, 0.06], "seeds": [3, 3],
                          "binary": True}}


def test_rows_in_points_and_table_order():
    rows = difference_rows(SUMMARY, CONTRASTS, "base", "exact")
    assert [r["label"] for r in rows] == ["cv - base", "sft - base", "cv - sft"]
    assert [r["kind"] for r in rows] == ["vs base", "vs base", "contrast"]
    assert rows[0]["diff"] == pytest.approx(3.0) and rows[0]["lo"] == pytest.approx(1.0) and rows[0]["hi"] == pytest.approx(5.0)
    assert rows[1]["hi"] == pytest.approx(1.2) and rows[2]["diff"] == pytest.approx(4.0)
    share = difference_rows(SUMMARY, {}, "base", "share")  # a continuous metric stays unscaled
    assert [(r["label"], r["diff"]) for r in share] == [("sft - base", 0.02), ("only_share - base", 0.1)]


def test_plot_is_a_png_of_the_asked_rows(tmp_path):
    from PIL import Image

    rows = difference_rows(SUMMARY, CONTRASTS, "base", "exact")
    data = plot_differences(rows, "exact", "mini: 3 training seeds", tmp_path / "differences.png")
    assert (tmp_path / "differences.png").read_bytes() == data
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    taller = Image.open(io.BytesIO(plot_differences(rows * 3, "exact", "more rows")))
    assert taller.size[0] == img.size[0] and taller.size[1] > img.size[1]  # one line per row
