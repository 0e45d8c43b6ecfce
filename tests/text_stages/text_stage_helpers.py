"""Shared checks for the text-stage tests."""

import json
from pathlib import Path

import pandas as pd
import yaml

from instructengine.text_pipeline import TextPipelineConfig


def artifacts(run_dir) -> dict:
    root = Path(run_dir)
    return {
        "taxonomy": (root / "taxonomy" / "taxonomy.json").read_text(),
        "review": (root / "taxonomy" / "review.csv").read_text(),
        "entities": pd.read_parquet(root / "entities" / "entities.parquet"),
        "pairs": pd.read_parquet(root / "instructions" / "pairs.parquet"),
    }


def assert_same_artifacts(a: dict, b: dict) -> None:
    assert a["taxonomy"] == b["taxonomy"]
    assert a["review"] == b["review"]
    pd.testing.assert_frame_equal(a["entities"], b["entities"])
    pd.testing.assert_frame_equal(a["pairs"], b["pairs"])


def counts(run_dir, stage: str) -> dict:
    return json.loads((Path(run_dir) / stage / "manifest.json").read_text())["counts"]


def small_config(run_dir, base_url, **sections) -> TextPipelineConfig:
    """A small but complete text-pipeline config against a local server (~140 requests)."""
    data = {
        "run_dir": str(run_dir),
        "llm": {
            "base_url": base_url, "model": "scripted", "api_key_env": "IE_TEST_KEY_UNSET", "concurrency": 8,
            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3, "timeout_s": 5.0,
        },
        "embedder": {"kind": "ngram"},
        "taxonomy": {
            "seeds": ["people", "animals", "landscapes"], "n_themes": 4, "theme_samples": 2,
            "axes": ["theme", "style"], "subtopics_per_theme": 3, "subtopic_samples": 2, "dedupe_threshold": 0.8,
        },
        "entities": {"per_subtopic": 6, "similarity_threshold": 0.3},
        "pairs": {"min_words": 4, "max_words": 40},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return TextPipelineConfig.model_validate(data)


def write_config(cfg: TextPipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path
