"""Training curves from metrics.jsonl: the plotted series (checked by hand), smoothing, several arms, PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instructengine.train.curves import IMPLICIT_ACC, curve_series, plot_training_curves, read_metrics
from instructengine.train.trainer import run_training

from .conftest import make_config


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CV = [{"step": 1, "loss": 0.69, "implicit_acc_x1": 0.5, "implicit_acc_x2": 0.25},
      {"step": 2, "loss": 0.60, "implicit_acc_x1": 0.75, "implicit_acc_x2": 0.5},
      {"step": 3, "loss": 0.50, "implicit_acc_x1": 1.0, "implicit_acc_x2": 0.75}]
DPO = [{"step": 2, "loss": 0.7, "implicit_acc_pair": 0.5}, {"step": 4, "loss": 0.4, "implicit_acc_pair": 0.875}]
REFL = [{"step": 1, "loss": 0.002, "reward": -0.3}, {"step": 2, "loss": 0.001, "reward": 0.1}]


def test_curves_of_several_arms(tmp_path):
    runs = {"cv_dpo": _write(tmp_path / "cv" / "metrics.jsonl", CV),
            "diffusion_dpo": _write(tmp_path / "dpo" / "metrics.jsonl", DPO),
            "refl": tmp_path / "refl"}  # a train folder
    _write(tmp_path / "refl" / "metrics.jsonl", REFL)
    out = tmp_path / "plots" / "curves.png"
    drawn = plot_training_curves(runs, out)
    steps, loss = drawn["loss"]["cv_dpo"]
    assert steps.tolist() == [1, 2, 3] and loss.tolist() == [0.69, 0.60, 0.50]
    # implicit accuracy = mean of the step's implicit_acc_* values
    assert drawn[IMPLICIT_ACC]["cv_dpo"][1].tolist() == [0.375, 0.625, 0.875]
    assert drawn[IMPLICIT_ACC]["diffusion_dpo"][0].tolist() == [2, 4]
    assert drawn[IMPLICIT_ACC]["diffusion_dpo"][1].tolist() == [0.5, 0.875]
    assert "refl" in drawn["loss"] and "refl" not in drawn[IMPLICIT_ACC]  # ReFL has no implicit accuracy
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1000, 360)
        arr = np.asarray(im.convert("RGB"))
    assert (arr < 250).any(axis=2).mean() > 0.02  # something was drawn
    drawn = plot_training_curves({"refl": runs["refl"]}, tmp_path / "r.png", metrics=("reward",))
    assert drawn["reward"]["refl"][1].tolist() == [-0.3, 0.1]
    with pytest.raises(ValueError, match="none of the runs"):
        plot_training_curves({"refl": runs["refl"]}, tmp_path / "x.png", metrics=(IMPLICIT_ACC,))


def test_smoothing_repeated_steps_and_bad_files(tmp_path):
    rows = [{"step": s, "loss": float(v)} for s, v in zip([1, 2, 3, 4], [4.0, 2.0, 6.0, 0.0])]
    rows.insert(2, {"step": 2, "loss": 8.0})  # a resumed run rewrote step 2: the last line wins
    path = _write(tmp_path / "m.jsonl", rows)
    read = read_metrics(path)
    assert [r["step"] for r in read] == [1, 2, 3, 4] and read[1]["loss"] == 8.0
    steps, vals = curve_series(read, "loss", smooth=2)  # trailing mean of 2: 4, (4+8)/2, (8+6)/2, (6+0)/2
    assert steps.tolist() == [1, 2, 3, 4] and vals.tolist() == [4.0, 6.0, 7.0, 3.0]
    with pytest.raises(ValueError, match="smooth must be >= 1"):
        curve_series(read, "loss", smooth=0)
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_metrics(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "nowhere")


def test_curves_of_a_real_run(tiny_root, tmp_path):
    result = run_training(make_config(tiny_root, tmp_path / "run", "sd15", "cv_dpo"))
    drawn = plot_training_curves([result.output_dir], tmp_path / "c.png")
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert drawn["loss"]["cv_dpo"][1].tolist() == [r["loss"] for r in lines]
    assert drawn[IMPLICIT_ACC]["cv_dpo"][1].tolist() == pytest.approx(
        [(r["implicit_acc_x1"] + r["implicit_acc_x2"]) / 2 for r in lines])
