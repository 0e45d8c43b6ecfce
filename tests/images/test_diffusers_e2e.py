"""The whole data pipeline from one config through the CLI, on the 'real' bundle in miniature: text
stages and the VLM judge against the local scripted server, a tiny diffusers pipeline built from
configs, the evaluate package's CLIP scorer with a tiny CLIP, and the baselines."""

import json
from pathlib import Path

import pandas as pd
from images_helpers import save_tiny_clip, save_tiny_sd_pipeline, write_config
from judge_responder import HashVLM
from scripted_server import ScriptedServer

from instructengine.data.schema import load_samples
from instructengine.images.cli import main
from instructengine.images.config import DataPipelineConfig


def _config(tmp_path: Path, base_url: str) -> DataPipelineConfig:
    llm = {"base_url": base_url, "model": "scripted", "api_key_env": "IE_TEST_KEY_UNSET", "concurrency": 8,
           "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3, "timeout_s": 5.0}
    clip = {"kind": "clip", "options": {"model": str(save_tiny_clip(tmp_path / "clip"))}, "batch_size": 16}
    return DataPipelineConfig.model_validate({
        "run_dir": str(tmp_path / "run"),
        "llm": llm,
        "embedder": {"kind": "ngram"},
        "taxonomy": {"seeds": ["people", "animals"], "n_themes": 3, "theme_samples": 1, "axes": ["theme", "style"],
                     "subtopics_per_theme": 2, "subtopic_samples": 1, "dedupe_threshold": 0.8},
        "entities": {"per_subtopic": 4, "similarity_threshold": 0.3},
        "pairs": {"min_words": 4, "max_words": 40, "dimensions_per_entity": 1},
        "generator": {"kind": "diffusers", "model": str(save_tiny_sd_pipeline(tmp_path / "sd")), "num_inference_steps": 2,
                      "local_files_only": True, "text_noise_sigma": 0.1},
        "candidates": {"n_candidates": 3, "instructions_per_call": 2},
        "select": {"scorer": clip},
        "judge": {"kind": "vlm", "concurrency": 4},
        "baselines": [
            {"name": "reward", "scorers": [clip]},
            {"name": "agfsync", "normalize": "zscore",
             "scorers": [{**clip, "weight": 0.55}, {"kind": "tests_brightness", "weight": 0.45, "options": {}}]},
        ],
    })


def test_all_stages_from_one_config_through_the_cli(tmp_path, monkeypatch):
    from instructengine.scorers.base import register_scorer

    register_scorer("tests_brightness", lambda options, ctx: Brightness())
    with ScriptedServer(HashVLM(every=3)) as srv:
        cfg = _config(tmp_path, srv.base_url)
        path = write_config(cfg, tmp_path / "data.yaml")
        assert main(["all", "--text", "--config", str(path)]) == 0
        requests = srv.total
        # a second run repeats no request and no image
        assert main(["all", "--text", "--config", str(path)]) == 0
        assert srv.total == requests
    run = Path(cfg.run_dir)
    pairs = pd.read_parquet(run / "instructions" / "pairs.parquet")
    cands = pd.read_parquet(run / "candidates" / "candidates.parquet")
    assert len(cands) == 2 * 3 * len(pairs) > 0
    man = json.loads((run / "candidates" / "manifest.json").read_text())
    assert man["extra"]["generated_this_run"] == 0  # (the second run)
    judge = json.loads((run / "judge" / "manifest.json").read_text())
    assert judge["counts"]["in"] == 2 * len(pairs) and set(judge["counts"]["dropped"]) == {"vlm:mismatch"}
    df, root = load_samples(run / "images")
    assert 0 < len(df) < len(pairs)
    assert (root / df["image_1"].iloc[0]).is_file()
    card = (root / "README.md").read_text()
    assert "| taxonomy | subtopics |" in card and "`vlm:mismatch`" in card and "`rejected:" in card
    for name in ("reward", "agfsync"):
        prefs = pd.read_parquet(run / "baselines" / name / "preferences.parquet")
        assert 0 < len(prefs) <= 2 * len(pairs)
    agf = pd.read_parquet(run / "baselines" / "agfsync" / "candidates.parquet")
    assert {"score_clip", "score_tests_brightness", "reward"} <= set(agf.columns)


class Brightness:
    """A second, prompt-blind score (mean brightness), standing in for AGFSync's aesthetic score."""

    name = "tests_brightness"

    def score(self, images, prompts):
        import numpy as np

        return np.array([np.asarray(im, dtype=np.float64).mean() / 255 for im in images])


def test_cli_reports_bad_config_clearly(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("candidates:\n  n_candidate: 4\n")
    assert main(["candidates", "--config", str(path)]) == 2
    assert "candidates.n_candidate: unknown field" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(f"run_dir: {tmp_path / 'empty'}\ngenerator: {{kind: shapes_render}}\n")
    assert main(["select", "--config", str(good)]) == 2
    assert "run the instructions stage first" in capsys.readouterr().err
    assert main(["all", "--config", str(good), "generator.kind=dalle"]) == 2
    assert "generator.kind = 'dalle'" in capsys.readouterr().err
