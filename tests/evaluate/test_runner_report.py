"""evaluate() + report() end to end with stand-in generators and scorers; storage contract; resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from instructengine.config import ConfigError, load_config, validate_config
from instructengine.evaluate.config import PAPER_METRICS, EvalConfig
from instructengine.evaluate.report import build_report_data, report
from instructengine.evaluate.runner import evaluate
from instructengine.evaluate.storage import model_dir, read_eval_folder


def _config(tmp_path, **over) -> EvalConfig:
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,category\na red car,Colors\na blue dog,Colors\ntwo red cats,Counting\n"
                   "three blue squares,Counting\na green circle,Shapes\na red square on a blue circle,Shapes\n")
    data = {
        "run_dir": str(tmp_path / "run"),
        "benchmark": {"name": "mini", "path": str(csv)},
        "models": [
            {"name": "base", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.0}},
            {"name": "tuned", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.2}},
        ],
        "images_per_prompt": 2,
        "batch_size": 4,
        "score_batch_size": 5,
        "scorers": ["eval_fakes:make_redness"],
        "report": {"average_metrics": ["eval_fakes_missing"], "bootstrap_samples": 200, "grid_prompts": 3},
    }
    data.update(over)
    return validate_config(EvalConfig, data)


def test_eval_writes_the_storage_contract_and_resumes(tmp_path):
    cfg = _config(tmp_path)
    logs: list[str] = []
    out = evaluate(cfg, log=logs.append)
    folder = out["base"]
    assert folder == model_dir(tmp_path / "run", "base", "mini")
    for name in ("generation.json", "prompts.parquet", "images.parquet", "scores.parquet", "summary.json",
                 "manifest.json", "config.yaml", "scorers.json"):
        assert (folder / name).is_file(), name
    images = pd.read_parquet(folder / "images.parquet")
    assert list(images.columns) == ["prompt_index", "seed", "path", "nsfw_flagged"]
    assert len(images) == 12 and set(images["seed"]) == {0, 1}
    assert images["path"].tolist()[:2] == ["images/0_0.png", "images/0_1.png"]
    assert all((folder / p).is_file() for p in images["path"])
    prompts = pd.read_parquet(folder / "prompts.parquet")
    assert list(prompts.columns) == ["prompt_index", "prompt", "category"] and len(prompts) == 6
    scores = pd.read_parquet(folder / "scores.parquet")
    assert list(scores.columns) == ["prompt_index", "seed", "redness"]
    gen = json.loads((folder / "generation.json").read_text())
    assert gen["model"]["options"] == {"red_bias": 0.0} and gen["seeds"] == [0, 1]
    assert gen["generator"]["kind"] == "colour-test-generator"

    # same prompts and seeds -> identical images across models except for the bias
    a = np.asarray(Image.open(folder / "images/2_1.png"), dtype=float)
    b = np.asarray(Image.open(out["tuned"] / "images/2_1.png"), dtype=float)
    assert np.allclose(a[..., 1:], b[..., 1:]) and (b[..., 0] >= a[..., 0]).all()
    s_base = json.loads((folder / "summary.json").read_text())
    s_tuned = json.loads((out["tuned"] / "summary.json").read_text())
    assert s_tuned["metrics"]["redness"]["mean"] > s_base["metrics"]["redness"]["mean"]
    assert set(s_base["categories"]) == {"Colors", "Counting", "Shapes"}
    assert "average" not in s_base  # its average_metrics are not all scored
    ci = s_base["metrics"]["redness"]
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]

    # a second run does nothing new
    evaluate(cfg, log=logs.append)
    m = json.loads((folder / "manifest.json").read_text())
    assert "generated_now" not in m["extra"] and m["extra"]["scored_now"] == {}
    assert m["counts"]["in"] == 12 and m["counts"]["out"] == 12

    # a new scorer adds only its columns; the old column is kept
    cfg2 = _config(tmp_path, scorers=["eval_fakes:make_redness", {"kind": "eval_fakes:make_constant", "options": {"value": 3}}])
    evaluate(cfg2, log=logs.append)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["extra"]["scored_now"] == {"eval_fakes:make_constant": 12}
    scores2 = pd.read_parquet(folder / "scores.parquet")
    assert list(scores2.columns) == ["prompt_index", "seed", "redness", "const_a", "const_b"]
    np.testing.assert_allclose(scores2["redness"], scores["redness"])
    assert (scores2["const_a"] == 3).all()

    # changed generation settings under the same model name are refused
    cfg3 = _config(tmp_path, models=[{"name": "base", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.5}}])
    with pytest.raises(ValueError, match=r"other settings \(changed: \['options'\]\)"):
        evaluate(cfg3, log=logs.append)


def test_per_prompt_noise_gives_each_prompt_its_own_noise(tmp_path):
    import hashlib

    one = [{"name": "base", "kind": "eval_fakes:make_colour_generator"}]
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    shared = evaluate(_config(tmp_path / "s", models=one), log=lambda s: None)["base"]
    own = evaluate(_config(tmp_path / "p", models=one, noise="per_prompt"), log=lambda s: None)["base"]

    def green(folder, name):  # the colour generator's green channel is its noise alone (prompts tint red or blue)
        return np.asarray(Image.open(folder / f"images/{name}.png"))[..., 1]

    # shared: image seed 1 is the same noise for every prompt; per prompt: not
    assert np.array_equal(green(shared, "0_1"), green(shared, "4_1"))
    assert not np.array_equal(green(own, "0_1"), green(own, "4_1"))
    assert not np.array_equal(green(own, "4_0"), green(own, "4_1"))
    # the documented seed: the first 31 bits (little-endian) of sha256("<prompt_index>/<seed>")
    seed = int.from_bytes(hashlib.sha256(b"4/1").digest()[:4], "little") & 0x7FFFFFFF
    want = (np.clip(np.random.default_rng(seed).uniform(0.2, 0.6, (32, 32, 3)), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(green(own, "4_1"), want[..., 1])
    assert json.loads((own / "generation.json").read_text())["noise"] == "per_prompt"
    # a folder made with one noise is not topped up with the other
    with pytest.raises(ValueError, match=r"other settings \(changed: \['noise'\]\)"):
        evaluate(_config(tmp_path / "s", models=one, noise="per_prompt"), log=lambda s: None)


def test_resume_after_a_lost_image_regenerates_only_it(tmp_path):
    cfg = _config(tmp_path, models=[{"name": "base", "kind": "eval_fakes:make_colour_generator"}])
    folder = evaluate(cfg, log=lambda s: None)["base"]
    before = (folder / "images/3_0.png").read_bytes()
    (folder / "images/3_0.png").unlink()
    evaluate(cfg, log=lambda s: None)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["extra"]["generated_now"] == 1
    assert (folder / "images/3_0.png").read_bytes() == before  # same seed, same image


def test_unreadable_image_is_counted_not_filled(tmp_path):
    cfg = _config(tmp_path, models=[{"name": "base", "kind": "eval_fakes:make_colour_generator"}])
    folder = evaluate(cfg, log=lambda s: None)["base"]
    (folder / "images/1_1.png").write_bytes(b"not a png")
    (folder / "scores.parquet").unlink()
    (folder / "scorers.json").unlink()
    evaluate(_config(tmp_path, models=[{"name": "base", "kind": "eval_fakes:make_colour_generator"}], skip_generation=True),
             log=lambda s: None)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["counts"]["dropped"] == {"image_unreadable": 1} and m["counts"]["out"] == 11
    scores = pd.read_parquet(folder / "scores.parquet")
    assert len(scores) == 11 and not ((scores["prompt_index"] == 1) & (scores["seed"] == 1)).any()


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="duplicate names"):
        _config(tmp_path, models=[{"name": "a", "kind": "x:y"}, {"name": "a", "kind": "x:y"}])
    with pytest.raises(ConfigError, match="folder-safe"):
        _config(tmp_path, models=[{"name": "a/b", "kind": "x:y"}])
    with pytest.raises(ConfigError, match="report.base"):
        _config(tmp_path, report={"base": "nope"})
    with pytest.raises(ConfigError, match="kind 'diffusers' needs `model`"):
        _config(tmp_path, models=[{"name": "m", "model": None}])


def test_report_tables_charts_grid_and_self_contained_html(tmp_path):
    cfg = _config(tmp_path, scorers=["eval_fakes:make_redness", "eval_fakes:make_constant"],
                  report={"average_metrics": ["redness", "const_a"], "bootstrap_samples": 200, "grid_prompts": 3})
    evaluate(cfg, log=lambda s: None)
    paths = report(cfg, log=lambda s: None)
    md = paths["markdown"].read_text()
    htm = paths["html"].read_text()
    js = json.loads(paths["json"].read_text())
    out = paths["markdown"].parent
    for f in ("charts/metrics.png", "charts/relative.png", "charts/categories.png", "grid.png"):
        assert (out / f).is_file() and (out / f).read_bytes()[:4] == b"\x89PNG", f
    # Table 1: tuned is redder, so its redness and Average are bold; the constant columns tie -> both bold
    table = md.split("## Table 1")[1].split("\n\n")[1]
    tuned_row = [line for line in table.splitlines() if line.startswith("| tuned")][0]
    base_row = [line for line in table.splitlines() if line.startswith("| base")][0]
    assert tuned_row.count("**") == 2 * 4 and base_row.count("**") == 2 * 2
    assert js["metrics"] == ["redness", "const_a", "const_b", "Average"]
    avg = js["means"]["tuned"]["Average"]
    assert avg == pytest.approx((js["means"]["tuned"]["redness"] + js["means"]["tuned"]["const_a"]) / 2)
    rel = js["relative_change_pct"]["tuned"]["redness"]
    base_r, tuned_r = js["means"]["base"]["redness"], js["means"]["tuned"]["redness"]
    assert rel == pytest.approx(100 * (tuned_r - base_r) / abs(base_r))
    d = js["difference_intervals"]["tuned"]["redness"]
    assert d["low"] > 0  # every image is redder: the paired interval excludes 0
    assert "## Relative change vs base" in md and " *" in md.split("## Relative change vs base")[1].split("##")[0]
    assert set(js["categories"]["Average"]) == {"Colors", "Counting", "Shapes"}
    # grid: 3 prompts spread over the 3 categories
    assert re.findall(r"- #(\d+) seed 0 \[(\w+)\]", md) == [("0", "Colors"), ("2", "Counting"), ("4", "Shapes")]
    # the HTML carries its images inline and links nothing outside
    assert htm.count("data:image/png;base64,") == 3 + 3 * 2
    assert "src='charts" not in htm and "href=" not in htm


def _write_folder(run, model, bench, values: dict[str, float], n_prompts=4, seeds=(0, 1)):
    folder = model_dir(run, model, bench)
    (folder / "images").mkdir(parents=True)
    rows, srows = [], []
    for p in range(n_prompts):
        for s in seeds:
            rel = f"images/{p}_{s}.png"
            Image.new("RGB", (8, 8), (p * 40, s * 90, 10)).save(folder / rel)
            rows.append({"prompt_index": p, "seed": s, "path": rel, "nsfw_flagged": None})
            srows.append({"prompt_index": p, "seed": s, **values})
    pd.DataFrame({"prompt_index": range(n_prompts), "prompt": [f"prompt {p}" for p in range(n_prompts)],
                  "category": ["A", "B"] * (n_prompts // 2)}).to_parquet(folder / "prompts.parquet")
    pd.DataFrame(rows).to_parquet(folder / "images.parquet")
    pd.DataFrame(srows).to_parquet(folder / "scores.parquet")
    (folder / "generation.json").write_text(json.dumps({"model": {"name": model}}))
    return folder


def test_average_and_relative_change_reproduce_table_1(tmp_path):
    """SD1.5 origin's six DrawBench means give Average 1.0781; 1.1916 is +10.53% over it."""
    origin = dict(zip(PAPER_METRICS, [0.2137, -0.0170, 0.2768, 0.2705, 0.4875, 5.2369]))
    ours = dict(origin, aesthetic=origin["aesthetic"] + 6 * (1.1916 - 1.0781))
    run = tmp_path / "run"
    folders = {"sd15": read_eval_folder(_write_folder(run, "sd15", "drawbench", origin)),
               "sd15-ie": read_eval_folder(_write_folder(run, "sd15-ie", "drawbench", ours))}
    cfg = validate_config(EvalConfig, {"run_dir": str(run), "models": [{"name": "sd15", "kind": "x:y"}, {"name": "sd15-ie", "kind": "x:y"}],
                                       "report": {"bootstrap_samples": 50}})
    data = build_report_data(folders, "sd15", cfg)
    assert data.metrics == PAPER_METRICS + ["Average"]
    assert round(data.means["sd15"]["Average"], 4) == 1.0781
    assert round(data.means["sd15-ie"]["Average"], 4) == 1.1916
    assert round(data.relative["sd15-ie"]["Average"], 2) == 10.53
    paths = report(cfg, log=lambda s: None)
    md = paths["markdown"].read_text()
    assert "| sd15 (base) | 0.2137 | -0.0170 | 0.2768 | 0.2705 | 0.4875 | 5.2369 | 1.0781 |" in md.replace("**", "")
    assert "+10.53%" in md


def test_report_refuses_models_with_different_prompts(tmp_path):
    run = tmp_path / "run"
    a = _write_folder(run, "a", "b1", {"clip": 0.2})
    _write_folder(run, "b", "b1", {"clip": 0.3})
    pd.DataFrame({"prompt_index": range(4), "prompt": ["x", "prompt 1", "prompt 2", "prompt 3"],
                  "category": ["A", "B"] * 2}).to_parquet(a / "prompts.parquet")
    cfg = validate_config(EvalConfig, {"run_dir": str(run), "benchmark": {"name": "b1"},
                                       "models": [{"name": "a", "kind": "x:y"}, {"name": "b", "kind": "x:y"}]})
    with pytest.raises(ValueError, match=r"different prompts at prompt_index \[0\]"):
        report(cfg, log=lambda s: None)


def test_every_shipped_eval_yaml_parses():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("eval_*.yaml"))
    assert files, "configs/eval_*.yaml missing"
    for f in files:
        cfg = load_config(EvalConfig, f)
        assert cfg.models


def test_report_with_a_metric_nobody_measured(tmp_path):
    run = tmp_path / "run"
    _write_folder(run, "a", "b1", {"clip": 0.2, "vqa": float("nan")})
    _write_folder(run, "b", "b1", {"clip": 0.25, "vqa": 0.5})
    cfg = validate_config(EvalConfig, {"run_dir": str(run), "benchmark": {"name": "b1"},
                                       "models": [{"name": "a", "kind": "x:y"}, {"name": "b", "kind": "x:y"}],
                                       "report": {"bootstrap_samples": 20}})
    paths = report(cfg, log=lambda s: None)
    md = paths["markdown"].read_text()
    assert "| a (base) | 0.2000 | – |" in md and "| b | **0.2500** | **0.5000** |" in md
    assert "no Average" in md
    js = paths["json"].read_text()
    assert "NaN" not in js and json.loads(js)["means"]["a"]["vqa"] is None  # standard JSON: NaN -> null
