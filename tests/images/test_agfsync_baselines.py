"""The AGFSync baseline presets against independent transcriptions, on fixed scores.

* ``agfsync_paper``: the paper's S = 0.35 VQA + 0.55 CLIP + 0.10 Aesthetic, each on 0-100 (VQA x100,
  CLIP cosine x100, VILA x100), best = argmax, worst = argmin; written below with plain Python floats.
* ``agfsync_code``: the steps of the released code's build_dataset.py: ``scorer_list = [(CLIPScorer,
  0.85), (AestheticScorer, 0.15)]``, ``scores = np.array([0] * 8, dtype=np.float16)``, per scorer
  ``tmp = np.array(list, dtype=np.float16); scores += weight * tmp``, ``win = argmax(scores)``,
  ``lose = argmax(-scores)``; its CLIP scores are ``logits_per_image`` (100 x cosine) of
  ``prompt[0:77]`` (clip_score.py) and its aesthetic scores VILA x 100 (aes_score.py).

The scorers are lookup tables of fixed raw scores (keyed by the image's pixels), so the test checks
the arithmetic and the picking, not a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from instructengine.config import ConfigError, load_config, validate_config
from instructengine.images.baselines import run_baseline
from instructengine.images.config import BaselineSpec, DataPipelineConfig

N_INSTRUCTIONS, N_CANDIDATES = 60, 8


def _key(image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


class TableScorer:
    """Returns the fixed raw score of each image; records the prompts it was given."""

    def __init__(self, name: str, table: dict[str, float]):
        self.name, self.columns, self.table = name, (name,), table
        self.prompts: list[str] = []

    def score(self, images, prompts):
        self.prompts += list(prompts)
        return np.array([self.table[_key(im)] for im in images])


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A candidates folder (60 instructions x 8 images) and fixed raw scores on each scorer's own scale."""
    run = tmp_path_factory.mktemp("agf") / "run"
    (run / "candidates" / "img").mkdir(parents=True)
    (run / "candidates" / "generator.json").write_text(json.dumps({"fingerprint": "table-test"}))
    rng = np.random.default_rng(7)
    rows, raw = [], {"vqa": {}, "clip": {}, "vila": {}, "aesthetic": {}}
    for i in range(N_INSTRUCTIONS):
        n_questions = int(rng.integers(9, 20))
        prompt = f"instruction {i}: " + " ".join(["a red cube on a blue sphere beside a green cone"] * (1 + i % 3))
        for k in range(N_CANDIDATES):
            pixel = (i % 256, k * 30, (i // 256) * 40 + 7)
            im = Image.new("RGB", (4, 4), pixel)
            rel = f"img/{i:03d}_{k}.png"
            im.save(run / "candidates" / rel)
            key = _key(im)
            raw["vqa"][key] = int(rng.integers(0, n_questions + 1)) / n_questions
            raw["clip"][key] = float(rng.normal(0.28, 0.03))
            raw["vila"][key] = float(rng.uniform(0.35, 0.75))
            raw["aesthetic"][key] = float(rng.normal(5.5, 0.5))
            rows.append({"candidate_id": f"p{i:03d}_1_{k}", "instruction_id": f"p{i:03d}_1", "pair_id": f"p{i:03d}",
                         "side": 1, "prompt": prompt, "k": k, "seed": 1000 * i + k, "image": rel, "nsfw": False})
    # near ties: float16 (the released code) and float64 disagree on which candidate is best
    for i in range(0, 10):
        keys = [_key(Image.new("RGB", (4, 4), (i % 256, k * 30, 7))) for k in range(N_CANDIDATES)]
        for key in keys:
            raw["clip"][key] = min(raw["clip"][key], 0.25)
        raw["clip"][keys[3]] = 0.3300
        raw["clip"][keys[5]] = 0.3301
        raw["vila"][keys[3]] = raw["vila"][keys[5]] = 0.6
    pd.DataFrame(rows).to_parquet(run / "candidates" / "candidates.parquet")
    return run, pd.DataFrame(rows), raw


def _cfg(run: Path, baselines: list[dict]) -> DataPipelineConfig:
    return DataPipelineConfig.model_validate({"run_dir": str(run), "generator": {"kind": "shapes_render"},
                                              "baselines": baselines})


def _picks(run: Path, name: str) -> dict[str, tuple[str, str]]:
    prefs = pd.read_parquet(run / "baselines" / name / "preferences.parquet")
    return {p.instruction_id: (Path(p.image_w).name, Path(p.image_l).name) for p in prefs.itertuples()}


def _images(rows: pd.DataFrame, run: Path, iid: str) -> list[tuple[str, str]]:
    g = rows[rows["instruction_id"] == iid].sort_values("k")
    return [(Path(r.image).name, _key(Image.open(run / "candidates" / r.image))) for r in g.itertuples()]


VILA = {"kind": "vila", "options": {"model_path": "/models/vila"}}


def test_agfsync_paper_preset_picks_the_papers_pairs(scored_run):
    run, rows, raw = scored_run
    spec = {"name": "agf_paper", "preset": "agfsync_paper", "scorers": [VILA]}
    scorers = {n: TableScorer(n, raw[n]) for n in ("vqa", "clip", "vila")}
    m = run_baseline(_cfg(run, [spec]), _cfg(run, [spec]).baselines[0], scorers)
    got = _picks(run, "agf_paper")
    prefs = pd.read_parquet(run / "baselines" / "agf_paper" / "preferences.parquet").set_index("instruction_id")
    expected = {}
    for iid in rows["instruction_id"].unique():
        imgs = _images(rows, run, iid)
        s = [0.35 * (100 * raw["vqa"][k]) + 0.55 * (100 * raw["clip"][k]) + 0.10 * (100 * raw["vila"][k]) for _, k in imgs]
        best = max(range(len(s)), key=lambda j: (s[j], -j))
        worst = min(range(len(s)), key=lambda j: (s[j], j))
        expected[iid] = (imgs[best][0], imgs[worst][0])
        assert prefs.loc[iid, "reward_w"] == pytest.approx(s[best], abs=1e-9)
        assert prefs.loc[iid, "reward_l"] == pytest.approx(s[worst], abs=1e-9)
    assert got == expected and len(got) == N_INSTRUCTIONS
    assert m.extra["preset"] == "agfsync_paper" and m.extra["normalize"] == "none"
    assert [(s["name"], s["weight"], s["scale"]) for s in m.extra["scorers"]] == [
        ("vqa", 0.35, 100.0), ("clip", 0.55, 100.0), ("vila", 0.10, 100.0)]

    # our z-score option, on the same scores, picks other pairs than the paper's raw sum
    z = {"name": "agf_z", "normalize": "zscore", "scorers": [
        {"kind": "vqa", "weight": 0.35}, {"kind": "clip", "weight": 0.55}, {"kind": "vila", "weight": 0.10}]}
    run_baseline(_cfg(run, [z]), _cfg(run, [z]).baselines[0], scorers)
    zpicks = _picks(run, "agf_z")
    assert sum(zpicks[i] != expected[i] for i in expected) > 0


def test_agfsync_code_preset_repeats_the_released_code(scored_run):
    run, rows, raw = scored_run
    spec = {"name": "agf_code", "preset": "agfsync_code", "scorers": [VILA]}
    scorers = {n: TableScorer(n, raw[n]) for n in ("clip", "vila")}
    cfg = _cfg(run, [spec])
    m = run_baseline(cfg, cfg.baselines[0], scorers)
    got = _picks(run, "agf_code")
    expected, float64_differs = {}, 0
    for iid in rows["instruction_id"].unique():
        imgs = _images(rows, run, iid)
        clip_scores = [100 * raw["clip"][k] for _, k in imgs]  # logits_per_image = logit_scale (100) x cosine
        aes_scores = [raw["vila"][k] * 100 for _, k in imgs]  # aes_score.py: aesthetic_score*100
        scores = np.array([0] * N_CANDIDATES, dtype=np.float16)
        for tmp_scores, weight in ((clip_scores, 0.85), (aes_scores, 0.15)):
            tmp_scores = np.array(tmp_scores, dtype=np.float16)
            scores += weight * tmp_scores
        win, lose = int(np.argmax(scores)), int(np.argmax(-scores))
        expected[iid] = (imgs[win][0], imgs[lose][0])
        exact = [0.85 * c + 0.15 * a for c, a in zip(clip_scores, aes_scores)]
        float64_differs += int(np.argmax(exact)) != win
    assert got == expected and len(got) == N_INSTRUCTIONS
    assert float64_differs >= 10  # the near ties: float16 gives the first of the two, as the released code does
    # CLIP was scored on the first 77 characters of each prompt (clip_score.py: prompt[0:77])
    full = set(rows["prompt"])
    assert max(map(len, full)) > 77 and set(scorers["clip"].prompts) == {p[0:77] for p in full}
    # scores of the cut prompts get their own cache file (not shared with whole-prompt CLIP scores)
    assert m.extra["score_clip_cached_computed"] == [0, N_INSTRUCTIONS * N_CANDIDATES]
    assert m.extra["reward_dtype"] == "float16"
    assert [(s["name"], s["weight"], s["scale"], s["prompt_chars"]) for s in m.extra["scorers"]] == [
        ("clip", 0.85, 100.0, 77), ("vila", 0.15, 100.0, None)]


def test_laion_substitute_and_explicit_scales(scored_run):
    run, rows, raw = scored_run
    spec = {"name": "agf_laion", "preset": "agfsync_paper", "preset_aesthetic": "laion"}
    cfg = _cfg(run, [spec])
    resolved = cfg.baselines[0].model_dump()
    assert [(s["kind"], s["weight"], s["scale"]) for s in resolved["scorers"]] == [
        ("vqa", 0.35, 100.0), ("clip", 0.55, 100.0), ("aesthetic", 0.10, 10.0)]
    assert resolved["scorers"][0]["options"] == {"protocol": "agfsync"}
    # the resolved config (as saved beside a run) loads back to the same spec
    assert BaselineSpec.model_validate(resolved).model_dump() == resolved
    scorers = {n: TableScorer(n, raw[n]) for n in ("vqa", "clip", "aesthetic")}
    run_baseline(cfg, cfg.baselines[0], scorers)
    expected = {}
    for iid in rows["instruction_id"].unique():
        imgs = _images(rows, run, iid)
        s = [0.35 * 100 * raw["vqa"][k] + 0.55 * 100 * raw["clip"][k] + 0.10 * 10 * raw["aesthetic"][k] for _, k in imgs]
        expected[iid] = (imgs[int(np.argmax(s))][0], imgs[int(np.argmin(s))][0])
    assert _picks(run, "agf_laion") == expected


def test_preset_errors_are_one_clear_line():
    def err(spec):
        with pytest.raises(ConfigError) as e:
            validate_config(BaselineSpec, spec, "baseline")
        return str(e.value)

    msg = err({"name": "a", "preset": "agfsync_paper"})
    assert "VILA-R" in msg and "model_path" in msg and "preset_aesthetic: laion" in msg
    assert "fixes clip.weight=0.55, got 0.6" in err({"name": "a", "preset": "agfsync_paper", "preset_aesthetic": "laion",
                                                     "scorers": [{"kind": "clip", "weight": 0.6}]})
    assert "fixes normalize=none" in err({"name": "a", "preset": "agfsync_code", "normalize": "zscore", "scorers": [VILA]})
    assert "not ['hpsv2']" in err({"name": "a", "preset": "agfsync_code", "scorers": [VILA, {"kind": "hpsv2"}]})
    assert "agfsync_code" in err({"name": "a", "preset": "agfsync_cod", "scorers": [VILA]})
    assert "only with a preset" in err({"name": "a", "preset_aesthetic": "laion", "scorers": [{"kind": "clip"}]})
    assert "fixes vqa.options.protocol=agfsync" in err({"name": "a", "preset": "agfsync_paper", "preset_aesthetic": "laion",
                                                        "scorers": [{"kind": "vqa", "options": {"protocol": "instructengine"}}]})
    # run settings of the preset's scorers are the user's
    spec = validate_config(BaselineSpec, {"name": "a", "preset": "agfsync_code", "scorers": [
        {**VILA, "batch_size": 4}, {"kind": "clip", "device": "cuda", "options": {"model": "/m/clip"}}]}, "baseline")
    clip = spec.scorers[0]
    assert (clip.kind, clip.device, clip.options, clip.weight, clip.prompt_chars) == ("clip", "cuda", {"model": "/m/clip"}, 0.85, 77)
    assert spec.scorers[1].batch_size == 4
    spec.min_gap = 0.5  # a validated assignment keeps the expanded preset
    assert spec.min_gap == 0.5 and [(s.kind, s.weight) for s in spec.scorers] == [("clip", 0.85), ("vila", 0.15)]


def test_shipped_sdxl_config_has_both_agfsync_presets():
    cfg = load_config(DataPipelineConfig, "configs/data_sdxl.yaml", [])
    by_name = {b.name: b for b in cfg.baselines}
    assert by_name["agfsync"].preset == "agfsync_paper" and by_name["agfsync"].normalize == "none"
    assert by_name["agfsync_code"].preset == "agfsync_code"
    weights = {s.kind: (s.weight, s.scale) for s in by_name["agfsync"].scorers}
    assert weights == {"vqa": (0.35, 100.0), "clip": (0.55, 100.0), "vila": (0.10, 100.0)}
    assert by_name["agfsync"].scorers[0].options["protocol"] == "agfsync"
    text = Path("configs/data_sdxl.yaml").read_text()
    assert "not verified" not in text
    assert yaml.safe_load(text)["baselines"]
