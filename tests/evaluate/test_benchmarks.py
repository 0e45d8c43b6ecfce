"""Prompt sets: the shipped DrawBench, file loaders, filters and the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from instructengine.config import ConfigError, validate_config
from instructengine.evaluate.benchmarks import (
    BenchmarkSpec,
    PromptSet,
    available_benchmarks,
    load_benchmark,
    load_prompt_file,
    register_benchmark,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "drawbench.csv"


def test_drawbench_is_shipped_with_200_prompts_in_11_categories():
    ps = load_benchmark(BenchmarkSpec())
    assert len(ps) == 200 and len(set(ps.categories)) == 11
    assert ps.prompts[0] == "A red colored car." and ps.categories[0] == "Colors"
    assert sum(c == "Reddit" for c in ps.categories) == 38
    if SHARED.is_file():  # the packaged copy is the shared file
        ref = pd.read_csv(SHARED)
        assert ps.prompts == ref["prompt"].tolist() and ps.categories == ref["category"].tolist()


def test_filters_keep_the_original_prompt_index():
    ps = load_benchmark(BenchmarkSpec(categories=["Counting"], limit=3))
    assert ps.categories == ["Counting"] * 3
    full = load_benchmark(BenchmarkSpec())
    assert [full.prompts[i] for i in ps.ids] == ps.prompts and ps.ids[0] > 0
    assert ps.to_frame()["prompt_index"].tolist() == ps.ids
    with pytest.raises(ValueError, match=r"no categories \['Colours'\]"):
        load_benchmark(BenchmarkSpec(categories=["Colours"]))


def test_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    assert load_prompt_file(tmp_path / "p.txt").prompts == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text("text,kind\na cat,animals\nan old car,objects\n")
    ps = load_prompt_file(tmp_path / "p.csv", prompt_column="text", category_column="kind")
    assert ps.prompts == ["a cat", "an old car"] and ps.categories == ["animals", "objects"]
    (tmp_path / "PartiPrompts.tsv").write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\nA tiger\tAnimals\tBasic\t\n")
    ps = load_prompt_file(tmp_path / "PartiPrompts.tsv")
    assert ps.prompts == ["bond", "A tiger"] and ps.categories == ["Abstract", "Animals"]
    assert load_prompt_file(tmp_path / "PartiPrompts.tsv", category_column="Challenge").categories == ["Basic", "Basic"]
    (tmp_path / "a.json").write_text(json.dumps(["x", "y"]))
    assert load_prompt_file(tmp_path / "a.json").categories == ["all", "all"]
    (tmp_path / "b.json").write_text(json.dumps({"photo": ["p1", "p2"], "anime": ["a1"]}))
    assert load_prompt_file(tmp_path / "b.json").categories == ["photo", "photo", "anime"]
    (tmp_path / "tifa.json").write_text(json.dumps([{"id": "1", "caption": "a man"}, {"id": "2", "caption": "a bus"}]))
    assert load_prompt_file(tmp_path / "tifa.json").prompts == ["a man", "a bus"]
    (tmp_path / "c.jsonl").write_text('{"prompt": "p", "category": "c"}\n\n{"prompt": "q"}\n')
    assert load_prompt_file(tmp_path / "c.jsonl").categories == ["c", "all"]
    hpd = tmp_path / "hpdv2"
    hpd.mkdir()
    (hpd / "anime.json").write_text(json.dumps(["a1", "a2"]))
    (hpd / "photo.json").write_text(json.dumps(["p1"]))
    ps = load_prompt_file(hpd)
    assert ps.prompts == ["a1", "a2", "p1"] and ps.categories == ["anime", "anime", "photo"] and ps.name == "hpdv2"


def test_file_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_file(tmp_path / "nope.txt")
    (tmp_path / "p.yaml").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_prompt_file(tmp_path / "p.yaml")
    (tmp_path / "p.csv").write_text("caption_text\nx\n")
    with pytest.raises(ValueError, match="no prompt column"):
        load_prompt_file(tmp_path / "p.csv")
    (tmp_path / "p.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list of strings or of objects"):
        load_prompt_file(tmp_path / "p.json")
    (tmp_path / "e.txt").write_text("\n\n")
    assert len(load_prompt_file(tmp_path / "e.txt")) == 0
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        PromptSet("x", ["a", " "])
    with pytest.raises(ConfigError, match="folder-safe"):
        validate_config(BenchmarkSpec, {"name": "my bench"})
    with pytest.raises(ValueError, match="unknown benchmark 'drawbnch'"):
        load_benchmark(BenchmarkSpec(name="drawbnch"))


def test_registry_accepts_dataframes_and_prompt_sets():
    register_benchmark("tiny-test-set", lambda: pd.DataFrame({"prompt": ["a", "b"], "category": ["x", "y"]}))
    assert "tiny-test-set" in available_benchmarks()
    ps = load_benchmark(BenchmarkSpec(name="tiny-test-set"))
    assert ps.prompts == ["a", "b"] and ps.name == "tiny-test-set"
    register_benchmark("tiny-test-set2", lambda: PromptSet("whatever", ["c"], ["z"]))
    assert load_benchmark(BenchmarkSpec(name="tiny-test-set2")).categories == ["z"]
    register_benchmark("tiny-test-set3", lambda: [1, 2])
    with pytest.raises(ValueError, match="expected a PromptSet or a DataFrame"):
        load_benchmark(BenchmarkSpec(name="tiny-test-set3"))


def test_shapesbench_is_reachable_by_name():
    pytest.importorskip("instructengine.shapes.bench")
    ps = load_benchmark(BenchmarkSpec(name="shapesbench"))
    assert len(ps) > 0 and len(set(ps.categories)) > 1
