"""Error shifts of trained U-Nets against their reference (the likelihood-displacement diagnostic)."""

from __future__ import annotations

import json

import pytest
import torch

from typer.testing import CliRunner

from instructengine.train.cli import app
from instructengine.train.models import load_trained_unet
from instructengine.train.shifts import COLUMNS, error_shifts
from instructengine.train.trainer import run_training

from .conftest import make_config


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A full fine-tune (ShapesWorld-kind) and a LoRA fine-tune (SD1.5-kind) of the tiny models."""
    runs = tmp_path_factory.mktemp("shift_runs")
    full = run_training(make_config(tiny_root, runs, "shapes", "cv_dpo", name="full", optim__lr=1e-2))
    lora = run_training(make_config(tiny_root, runs, "sd15", "cv_dpo", name="lora", lora__enabled=True,
                                    lora__rank=4, optim__lr=1e-2))
    return full, lora


def test_reference_against_itself_has_no_shift_and_a_trained_model_has(tiny_root, tmp_path, trained):
    full, _ = trained
    cfg = make_config(tiny_root, tmp_path, "shapes", "cv_dpo")
    df = error_shifts(cfg, {"self": tiny_root / "shapes" / "unet", "trained": full.final_path},
                      samples=100, draws=2, batch_size=3)
    assert list(df.columns) == ["model", "samples", *COLUMNS] and list(df.model) == ["self", "trained"]
    same, moved = df.iloc[0], df.iloc[1]
    assert same.samples == 8  # every sample of the tiny dataset (fewer than asked)
    assert same.shift_matched == 0.0 and same.shift_mismatched == 0.0 and same.cv_margin == 0.0
    assert same.image_triples_right == 0.0 and same.instruction_triples_right == 0.0  # strict: no change is not right
    assert same.ref_matched > 0 and moved.ref_matched == same.ref_matched  # one reference for all
    assert abs(moved.shift_matched) > 0 and abs(moved.shift_mismatched) > 0
    # the CV margin is the sum of both image triples' margins: 2 x (mismatched - matched) on average
    assert moved.cv_margin == pytest.approx(2 * (moved.shift_mismatched - moved.shift_matched), rel=1e-9, abs=1e-12)
    assert moved.shift_matched_rel == pytest.approx(moved.shift_matched / moved.ref_matched)
    again = error_shifts(cfg, {"trained": full.final_path}, samples=100, draws=2, batch_size=3)
    assert again.iloc[0].drop("model").tolist() == moved.drop("model").tolist()  # same seed and batching


def test_lora_weights_are_fused_into_the_base_unet(tiny_root, tmp_path, trained):
    _, lora = trained
    base = tiny_root / "sd15" / "unet"
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(base)
    fused = load_trained_unet(base, lora.final_path.parent)  # the folder holding the LoRA weights
    changed = [n for (n, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()) if not torch.equal(a, b)]
    assert changed and all("attn" in n for n in changed)  # LoRA targets attention projections only
    cfg = make_config(tiny_root, tmp_path, "sd15", "cv_dpo")
    df = error_shifts(cfg, {"lora": lora.final_path}, samples=4, draws=1)
    assert df.iloc[0].samples == 4 and df.iloc[0].shift_matched != 0.0  # through the VAE path as well


def test_bad_inputs_are_named(tiny_root, tmp_path):
    cfg = make_config(tiny_root, tmp_path, "shapes", "cv_dpo")
    with pytest.raises(FileNotFoundError, match="is not a trained U-Net"):
        error_shifts(cfg, {"x": tmp_path}, samples=2, draws=1)
    with pytest.raises(ValueError, match="at least one trained U-Net"):
        error_shifts(cfg, {}, samples=2)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        error_shifts(cfg, {"x": tmp_path}, draws=0)
    bad = CliRunner().invoke(app, ["shifts", "--unet", "no-equals-sign"])
    assert bad.exit_code == 2 and "expected NAME=PATH" in bad.output


def test_cli_writes_table_and_numbers(tiny_root, tmp_path, trained):
    import yaml

    full, _ = trained
    cfg = make_config(tiny_root, tmp_path, "shapes", "cv_dpo")
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "shifts" / "table.md"
    result = CliRunner().invoke(app, ["shifts", "--config", str(path), "--unet", f"cv={full.final_path}",
                                      "--samples", "4", "--draws", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[2].startswith("| cv | 4 | ")
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size[0] > 500 and "![error shifts](table.png)" in out.read_text()
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows[0]["model"] == "cv" and set(COLUMNS) <= set(rows[0])
