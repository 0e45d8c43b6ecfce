"""The ablation runner: statistics by hand, an end-to-end miniature run, the random-pick data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from instructengine.config import ConfigError, load_config
from instructengine.experiments.ablation import (
    AblationConfig,
    paired_bootstrap,
    random_pick_samples,
    Arm,
    format_contrasts,
    format_metric_differences,
    run_ablation,
    summarize_arms,
    summarize_contrasts,
    variance_components,
)
from instructengine.train.tiny import write_candidates, write_samples

PROMPTS = ["a red square", "a blue bar", "a green square", "a yellow bar", "two red squares", "a blue square"]


def tiny_evaluator(model_dir: Path, name: str, run_dir: Path, prompts: str, seeds: list[int]) -> pd.DataFrame:
    """A model-dependent stand-in for ShapesBench: thresholds of the U-Net's prediction (1/0 metrics)."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(Path(model_dir) / "unet").eval()
    text = CLIPTextModel.from_pretrained(Path(model_dir) / "text_encoder").eval()
    tok = AutoTokenizer.from_pretrained(Path(model_dir) / "tokenizer")
    rows = []
    with torch.no_grad():
        for p, prompt in enumerate(PROMPTS):
            ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            ehs = text(ids).last_hidden_state
            for s in seeds:
                x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1000 * s + p))
                out = unet(x, torch.tensor([500]), encoder_hidden_states=ehs).sample
                rows.append({"prompt_index": p, "seed": s, "exact": float(out.mean() > x.mean()),
                             "colour": float(out[:, 0].mean() > out[:, 2].mean()),
                             "relation": np.nan if p % 2 else float(out.std() > 1.0)})
    return pd.DataFrame(rows)


def test_paired_bootstrap_by_hand():
    ones = (np.ones((2, 5)), np.ones((2, 5)))
    zeros = (np.zeros((1, 5)), np.ones((1, 5)))
    s = paired_bootstrap(ones, zeros, n=200)
    assert s["mean"] == 1.0 and s["diff"] == 1.0 and s["ci95"] == [1.0, 1.0] and s["diff_ci95"] == [1.0, 1.0]
    rng = np.random.default_rng(0)
    same = (rng.integers(0, 2, (1, 50)).astype(float), np.ones((1, 50)))
    paired = paired_bootstrap(same, same, n=500)
    assert paired["diff"] == 0.0 and paired["diff_ci95"] == [0.0, 0.0]  # identical arms: no spread when paired
    assert paired["ci95"][0] < paired["mean"] < paired["ci95"][1]


def test_summarize_skips_not_applicable_rows():
    base = pd.DataFrame({"prompt_index": [0, 1, 2, 3], "seed": 0, "exact": [0, 0, 1, 0.0],
                         "relation": [1.0, np.nan, 0.0, np.nan]})
    arm = base.assign(exact=[1, 1, 1, 0.0], relation=[1.0, np.nan, 1.0, np.nan])
    out = summarize_arms({"base": [base], "cv": [arm, arm]}, "base", n_boot=200)
    assert out["cv"]["exact"]["mean"] == 0.75 and out["cv"]["exact"]["diff"] == 0.5
    assert out["cv"]["relation"]["n"] == 4 and out["cv"]["relation"]["mean"] == 1.0  # 2 seeds x 2 applicable
    assert out["base"]["relation"]["mean"] == 0.5 and "diff" not in out["base"]["exact"]


def test_contrasts_by_hand_include_the_seed_term():
    """a - b of the main metric: a shift known by construction, then a seed term whose bootstrap
    distribution is derived by hand."""
    prompts = range(4)
    b = pd.DataFrame({"prompt_index": prompts, "seed": 0, "score": [0.1, 0.5, 0.2, 0.7]})
    shifted = b.assign(score=b.score + 0.25)
    out = summarize_contrasts({"a": [shifted], "b": [b]}, [("a", "b")], "score", n_boot=300)
    c = out["a - b"]
    assert c["diff"] == pytest.approx(0.25) and c["diff_ci95"] == pytest.approx([0.25, 0.25])  # paired prompts
    assert c["seeds"] == [1, 1] and not c["binary"]
    # two training seeds of a, constant 0.2 and 0.4 on every prompt; b constant 0: a resample's
    # difference is 0.2 (p 1/4), 0.3 (p 1/2) or 0.4 (p 1/4), so the 95% interval is [0.2, 0.4]
    a2 = [b.assign(score=0.2), b.assign(score=0.4)]
    zero = b.assign(score=0.0)
    out = summarize_contrasts({"a": a2, "b": [zero], "base": [zero]}, [("a", "b"), ("b", "a")], "score", n_boot=2000)
    assert out["a - b"]["diff"] == pytest.approx(0.3) and out["a - b"]["diff_ci95"] == pytest.approx([0.2, 0.4])
    assert out["b - a"]["diff_ci95"] == pytest.approx([-0.4, -0.2]) and out["b - a"]["seeds"] == [1, 2]
    text = format_contrasts(out, "score")
    assert "| a - b | +0.300 [0.200, 0.400] | 0.100 | 2 vs 1 |" in text
    # binary metric in percent; a contrast with an arm that has no scores yet is left out
    hits = pd.DataFrame({"prompt_index": prompts, "seed": 0, "exact": [1.0, 0.0, 1.0, 1.0]})
    miss = hits.assign(exact=[0.0, 0.0, 1.0, 0.0])
    out = summarize_contrasts({"a": [hits], "b": [miss]}, [("a", "b"), ("a", "c")], "exact", n_boot=200)
    assert list(out) == ["a - b"] and out["a - b"]["diff"] == pytest.approx(0.5)
    assert format_contrasts(out, "exact").splitlines()[2].startswith("| a - b | +50.0 [")


def test_metric_differences_table_bolds_only_intervals_that_exclude_zero():
    """Per-metric differences vs the base: a constant shift (interval = the shift) is bold, a
    difference that is +1 on one prompt and -1 on the other (interval spans 0) is not."""
    prompts = range(2)
    base = pd.DataFrame({"prompt_index": prompts, "seed": 0, "exact": [0.0, 1.0], "palette": [0.0, 0.0],
                         "score": [0.1, 0.5]})
    arm = base.assign(exact=[1.0, 0.0], palette=[1.0, 1.0], score=base.score + 0.25)
    summary = summarize_arms({"base": [base], "arm": [arm]}, "base", n_boot=400)
    text = format_metric_differences(summary, [Arm(name="base", method=None), Arm(name="arm", method="cv_dpo")], "base")
    lines = text.splitlines()
    assert lines[0] == "| arm | exact | palette | score |" and len(lines) == 3  # the base has no row
    exact, palette, score = lines[2].split(" | ")[1:]
    assert exact.startswith("0.0 [-100.0, ") and not exact.startswith("**")  # resamples: -100, 0 or +100
    assert palette == "**+100.0 [100.0, 100.0]**"
    assert score == "**+0.250 [0.250, 0.250]** |"


def test_contrast_config_names_the_bad_arm():
    base = {"name": "x", "arms": [{"name": "base", "method": None}, {"name": "cv", "method": "cv_dpo"}], "test_prompts": "p.txt",
            "evaluator": "m:f"}
    assert AblationConfig(**base, contrasts=[["cv", "base"]]).contrasts == [("cv", "base")]
    with pytest.raises(ValueError, match="contrast \\[cv, dpo\\]: 'dpo' is not one of the arms"):
        AblationConfig(**base, contrasts=[["cv", "dpo"]])
    with pytest.raises(ValueError, match="give two different arms"):
        AblationConfig(**base, contrasts=[["cv", "cv"]])


def test_variance_components_from_score_tables_match_the_array_estimate():
    from instructengine.evaluate.stats import VarianceComponents

    rng = np.random.default_rng(2)
    n_prompts, image_seeds = 30, [0, 1]

    def table(p_exact):
        rows = [{"prompt_index": p, "seed": k, "exact": float(rng.random() < p_exact)} for p in range(n_prompts)
                for k in image_seeds]
        return pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1000)))  # order must not matter

    base, arms = table(0.3), [table(0.4), table(0.5), table(0.45)]
    got = variance_components({"base": [base], "cv": arms, "one_seed": [arms[0]]}, "base", "exact")
    assert set(got) == {"cv"}  # one training seed: no seed variance to estimate
    arr = np.stack([a.sort_values(["prompt_index", "seed"]).exact.to_numpy().reshape(n_prompts, 2) for a in arms])
    want = VarianceComponents.estimate(arr, base.sort_values(["prompt_index", "seed"]).exact.to_numpy().reshape(n_prompts, 2))
    assert got["cv"]["components"] == pytest.approx(want.__dict__)
    assert got["cv"]["se"] == pytest.approx(want.se(n_prompts, 3, 2))
    assert (got["cv"]["n_seeds"], got["cv"]["n_prompts"], got["cv"]["n_images"]) == (3, n_prompts, 2)


def _ablation_yaml(tiny_root: Path, tmp_path: Path) -> Path:
    cfg = {
        "name": "mini", "run_dir": str(tmp_path / "runs"), "seeds": [0, 1],
        "train": {"model": {"kind": "shapes", "path": str(tiny_root / "shapes")},
                  "data": {"path": str(tiny_root / "data"), "resolution": 16},
                  "batch_size": 4, "micro_batch_size": 2, "max_steps": 2, "device": "cpu", "tensorboard": False,
                  "optim": {"lr": 1e-3}},
        "arms": [{"name": "base", "method": None}, {"name": "cv", "method": "cv_dpo"},
                 {"name": "sft", "method": "sft", "overrides": ["optim.lr=5e-4"]}],
        "selection": {"prompts": "val.csv", "seeds": [7], "steps": [1, 2], "grid": [[], ["loss.beta=100"]], "metric": "exact"},
        "main_metric": "exact",
        "evaluator": f"{__name__}:tiny_evaluator", "test_prompts": "test.csv", "test_seeds": [0, 1, 2],
        "bootstrap": 200,
    }
    import yaml

    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ablation_end_to_end_and_resumable(tiny_root, tmp_path, caplog):
    cfg = load_config(AblationConfig, _ablation_yaml(tiny_root, tmp_path), ['contrasts=[["cv", "sft"]]'])
    with caplog.at_level("INFO", logger="instructengine.experiments.ablation"):
        table = run_ablation(cfg)
    progress = [r.getMessage() for r in caplog.records]  # what `instructengine train ablation` prints
    assert any(m.startswith("training cv-seed1 (cv_dpo, max_steps ") for m in progress)
    assert sum(m.startswith("selection cv grid") for m in progress) == 4
    assert "evaluated base on test.csv: 18 images" in progress
    text = table.read_text()
    assert [ln.split("|")[1].strip() for ln in text.splitlines()[2:5]] == ["base", "cv", "sft"]
    assert "diff vs base" in text and "Wall time" in text
    summary = json.loads((table.parent / "summary.json").read_text())
    sel = pd.DataFrame(summary["selection"])
    assert len(sel) == 9  # the base model on the validation prompts + 2 arms x 2 grid points x 2 stopping points
    base_val = sel[sel.arm == "base"].iloc[0]
    assert base_val.steps == 0 and base_val.exact == pd.read_parquet(table.parent / "scores" / "val-base.parquet").exact.mean()
    assert "## Selection on validation prompts" in text and "(chosen)" in text
    assert text.count("(chosen)") == 2  # one per trained arm
    sel = sel[sel.arm != "base"]
    for arm, rows in sel.groupby("arm"):
        best = rows.loc[rows.exact.idxmax()]
        assert summary["chosen"][arm] == [*best.overrides, f"max_steps={best.steps}"]
    runs = table.parent / "train"
    finals = sorted(p.name for p in runs.iterdir() if not p.name.split("-")[1].startswith("sel"))
    assert finals == ["cv-seed0", "cv-seed1", "sft-seed0", "sft-seed1"]
    assert summary["summary"]["cv"]["exact"]["n"] == 2 * 6 * 3
    contrast = summary["contrasts"]["cv - sft"]  # the difference of the two rows' means, with its interval
    means = {a: summary["summary"][a]["exact"]["mean"] for a in ("cv", "sft")}
    assert contrast["diff"] == pytest.approx(means["cv"] - means["sft"]) and contrast["seeds"] == [2, 2]
    assert contrast["diff_ci95"][0] <= contrast["diff"] <= contrast["diff_ci95"][1]
    assert "## Differences between arms" in text and "| cv - sft | " in text
    assert "## Every metric's difference vs base" in text and "\n| cv | " in text and "\n| sft | " in text
    assert (table.parent / "differences.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # second invocation: nothing is trained or evaluated again
    stamp = {p: p.stat().st_mtime for p in runs.rglob("manifest.json")}
    again = run_ablation(cfg)
    assert {p: p.stat().st_mtime for p in runs.rglob("manifest.json")} == stamp
    assert again.read_text().splitlines()[:5] == text.splitlines()[:5]
    # another ablation on the same base, prompts and seeds reuses the base's scores instead of sampling it
    other = cfg.model_copy(update={"name": "mini2", "arms": cfg.arms[:1], "selection": None})
    caplog.clear()
    with caplog.at_level("INFO", logger="instructengine.experiments.ablation"):
        run_ablation(other)
    progress = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("evaluated base") for m in progress)
    assert any(m.startswith("base scores of base on test.csv reused from") for m in progress)
    pd.testing.assert_frame_equal(pd.read_parquet(table.parent.parent / "mini2" / "scores" / "base.parquet"),
                                  pd.read_parquet(table.parent / "scores" / "base.parquet"))
    # other image seeds: a different key, sampled anew
    caplog.clear()
    with caplog.at_level("INFO", logger="instructengine.experiments.ablation"):
        run_ablation(other.model_copy(update={"name": "mini3", "test_seeds": [5]}))
    assert "evaluated base on test.csv: 6 images" in [r.getMessage() for r in caplog.records]
    # the same ablation asked for other image seeds refuses its cached scores instead of reusing them
    with pytest.raises(ValueError, match=r"\.parquet: cached scores have image seeds \[0, 1, 2\], "
                                         r"this config asks for \[7\]; delete the file"):
        run_ablation(cfg.model_copy(update={"test_seeds": [7], "selection": None}))


def test_ablation_config_errors_name_the_arm(tiny_root, tmp_path):
    path = _ablation_yaml(tiny_root, tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)arm 'cv'.*optim\.lr"):
        load_config(AblationConfig, path, ["train.optim.lr=-1"])


def test_random_pick_samples(tmp_path):
    samples = write_samples(tmp_path / "best", n=4)
    df = pd.read_parquet(samples / "samples.parquet")
    cand_dir = write_candidates(tmp_path / "cands", prompts=2, per_prompt=3)
    cands = pd.read_parquet(cand_dir / "candidates.parquet")
    # give the first two samples' instructions candidates; the others have none
    extra = [{"prompt": df.instruction_1[i], "image": cands.image[j], "reward": 0.0, "seed": j}
             for i in range(2) for j in range(3)]
    extra += [{"prompt": df.instruction_2[i], "image": cands.image[3 + j], "reward": 0.0, "seed": j}
              for i in range(2) for j in range(3)]
    pd.DataFrame(extra).to_parquet(cand_dir / "pool.parquet", index=False)
    out = random_pick_samples(samples, cand_dir / "pool.parquet", tmp_path / "random", seed=0)
    picked = pd.read_parquet(out)
    pool = set(pd.DataFrame(extra).prompt)
    expected = int((df.instruction_1.isin(pool) & df.instruction_2.isin(pool)).sum())
    assert 2 <= expected < len(df) and len(picked) == expected and list(picked.columns) == list(df.columns)
    for row in picked.itertuples():
        assert (out.parent / row.image_1).resolve().is_file()
        pool_1 = {Path(e["image"]).name for e in extra if e["prompt"] == row.instruction_1}
        assert Path(row.image_1).name in pool_1
    manifest = json.loads((tmp_path / "random" / "manifest.json").read_text())
    assert manifest["counts"]["dropped"] == {"instruction without candidates": len(df) - expected}


def test_export_pipeline_fuses_lora(tiny_root, tmp_path):
    from diffusers import UNet2DConditionModel

    from instructengine.experiments.ablation import export_pipeline
    from instructengine.train.trainer import run_training

    from .conftest import make_config

    lora = run_training(make_config(tiny_root, tmp_path, "shapes", "cv_dpo", lora__enabled=True, lora__rank=2,
                                    optim__lr=1e-2))
    out = export_pipeline(tiny_root / "shapes", lora.final_path, True, tmp_path / "export")
    assert (out / "text_encoder").is_symlink() and not (out / "unet").is_symlink()
    fused = UNet2DConditionModel.from_pretrained(out / "unet")
    ref = UNet2DConditionModel.from_pretrained(tiny_root / "shapes" / "unet")
    x, t, ehs = torch.randn(1, 3, 16, 16), torch.tensor([300]), torch.randn(1, 8, 16)
    base = ref(x, t, encoder_hidden_states=ehs).sample
    ref.load_lora_adapter(str(lora.final_path.parent), weight_name=lora.final_path.name, prefix="unet")
    expected = ref(x, t, encoder_hidden_states=ehs).sample
    got = fused(x, t, encoder_hidden_states=ehs).sample
    assert not torch.allclose(expected, base)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
