"""The candidates stage: one file per image with deterministic seeds, batched calls, resume,
failures counted by reason, and refusal to mix two generators' images."""

import json

import numpy as np
import pandas as pd
import pytest
from images_helpers import MistakeRenderGenerator, copy_text_run, make_config, manifest, write_pairs
from PIL import Image

from instructengine.images.candidates import plan_instructions, read_candidates, run_candidates
from instructengine.images.files import candidate_path, image_seed, read_png_meta
from instructengine.shapes.oracle import judge
from instructengine.shapes.render import render_caption


def test_renderer_candidates_files_seeds_and_table(shapes_text_run, tmp_path):
    run = copy_text_run(shapes_text_run, tmp_path / "run")
    cfg = make_config(run, candidates={"n_candidates": 3, "instructions_per_call": 4, "max_pairs": 10})
    m = run_candidates(cfg)
    df = read_candidates(run)
    assert len(df) == 10 * 2 * 3 == m.count_out == m.count_in
    assert m.extra["generated_this_run"] == 60 and m.extra["processes"] == 1
    assert df["candidate_id"].is_unique and set(df["k"]) == {0, 1, 2}
    pairs = pd.read_parquet(run / "instructions" / "pairs.parquet")
    assert set(df["pair_id"]) == set(plan_instructions(pairs, 10)[i].pair_id for i in range(20))
    for row in df.sample(8, random_state=0).itertuples():
        assert row.seed == image_seed(0, row.instruction_id, row.k)
        assert row.image == candidate_path(row.instruction_id, row.k)
        arr = np.asarray(Image.open(run / "candidates" / row.image))
        # the renderer is exact: the file holds render(prompt, seed) and the oracle accepts it
        assert np.array_equal(arr, render_caption(row.prompt, row.seed))
        assert judge(arr, row.prompt)["exact"]
        assert read_png_meta(run / "candidates" / row.image) == {"seed": row.seed, "nsfw": False}
    # candidates of distinct (instruction, k) get distinct seeds
    assert df["seed"].is_unique


def test_one_batched_call_per_group_of_instructions(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles")] * 5)
    gen = MistakeRenderGenerator(every=10**9)
    cfg = make_config(run, candidates={"n_candidates": 4, "instructions_per_call": 3})
    run_candidates(cfg, generator=gen)
    # 10 instructions x 4 candidates in calls of 3 instructions: 12 + 12 + 12 + 4 images
    assert gen.calls == [12, 12, 12, 4]


def test_resume_skips_existing_images_and_redoes_missing_ones(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles"), ("a small blue square", "a large blue square")])
    cfg = make_config(run, candidates={"n_candidates": 2, "instructions_per_call": 1})
    run_candidates(cfg)
    before = (run / "candidates" / "candidates.parquet").read_bytes()
    gen = MistakeRenderGenerator(every=10**9)
    m = run_candidates(cfg, generator=_same_fingerprint(gen, cfg))
    assert gen.calls == [] and m.extra["generated_this_run"] == 0
    victim = run / "candidates" / candidate_path("p0001_2", 1)
    other = run / "candidates" / candidate_path("p0001_2", 0)
    mtime = other.stat().st_mtime_ns
    victim.unlink()
    m = run_candidates(cfg, generator=_same_fingerprint(gen, cfg))
    # the call is redone whole (same batch, same pixels) but only the missing file is written
    assert gen.calls == [2] and m.extra["generated_this_run"] == 1 and other.stat().st_mtime_ns == mtime
    assert victim.is_file() and (run / "candidates" / "candidates.parquet").read_bytes() == before
    victim.write_bytes(b"")  # a zero-byte file (what a machine crash can leave) counts as missing
    m = run_candidates(cfg, generator=_same_fingerprint(gen, cfg))
    assert gen.calls == [2, 2]


def _same_fingerprint(gen, cfg):
    gen.fingerprint = cfg.generator.fingerprint()
    return gen


def test_failed_instructions_are_counted_by_reason_and_the_rest_kept(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles"), ("a purple elephant", "a small red circle"),
                      ("a small blue square", "a large blue square")])
    cfg = make_config(run, candidates={"n_candidates": 2, "instructions_per_call": 6})
    m = run_candidates(cfg)
    # the whole call failed, so each instruction was retried alone: only p0001_1 fails
    assert m.dropped == {"generation_error:CaptionError": 2}
    assert m.count_in == 12 and m.count_out == 10 and m.extra["instructions_failed"] == 1
    failures = (run / "candidates" / "failures-shard0-rank0.jsonl").read_text()
    assert "p0001_1" in failures and "purple" in failures
    # a re-run does not retry it (same artifacts); retry_failed does
    again = run_candidates(cfg)
    assert again.dropped == m.dropped and again.extra["generated_this_run"] == 0
    retry = make_config(run, candidates={"n_candidates": 2, "instructions_per_call": 6, "retry_failed": True})
    assert run_candidates(retry).dropped == m.dropped


def test_a_generator_that_fails_everything_aborts(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [(f"nonsense {i}", f"gibberish {i}") for i in range(6)])
    cfg = make_config(run, candidates={"n_candidates": 2, "abort_after_failures": 4, "instructions_per_call": 1})
    with pytest.raises(RuntimeError, match="failed on the first 4 instructions.*CaptionError"):
        run_candidates(cfg)


def test_another_generator_is_refused_in_the_same_folder(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles")])
    run_candidates(make_config(run))
    other = make_config(run, generator={"kind": "shapes_render", "num_inference_steps": 7})
    with pytest.raises(ValueError, match="made by generator .* but the config now gives"):
        run_candidates(other)


def test_missing_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the instructions stage first"):
        run_candidates(make_config(tmp_path / "empty"))


def test_nsfw_flags_are_recorded_from_the_generator(tmp_path):
    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles"), ("a small blue square", "a large blue square")])
    cfg = make_config(run, generator={"kind": "images_helpers:make_mistake_generator",
                                      "options": {"every": 10**9, "flag_every": 2}},
                      candidates={"n_candidates": 4})
    m = run_candidates(cfg)
    df = read_candidates(run)
    assert df["nsfw"].tolist() == [s % 2 == 1 for s in df["seed"]]
    assert m.extra["nsfw_flagged"] == int(df["nsfw"].sum()) > 0
    assert manifest(run, "candidates")["counts"]["out"] == 16


def test_independent_shards_then_one_merge_equal_a_single_run(tmp_path):
    from images_helpers import assert_same_candidates, stage_artifacts

    captions = [("a small red circle", "two small red circles"), ("a small blue square", "a large blue square"),
                ("three small yellow triangles", "three small broken yellow triangles")]
    ref = tmp_path / "ref"
    write_pairs(ref, captions)
    run_candidates(make_config(ref))
    run = tmp_path / "run"
    write_pairs(run, captions)
    made = []
    for shard in (0, 1):
        cfg = make_config(run, candidates={"num_shards": 2, "shard_index": shard})
        assert run_candidates(cfg) is None  # a shard job does not merge
        made.append(json.loads((run / "candidates" / f"run-shard{shard}-rank0.json").read_text())["generated"])
    assert made == [9, 9] and not (run / "candidates" / "candidates.parquet").exists()
    m = run_candidates(make_config(run))
    assert m.extra["generated_this_run"] == 0
    assert_same_candidates(stage_artifacts(ref), stage_artifacts(run))
    with pytest.raises(ValueError, match="shard_index=2 must be < num_shards=2"):
        make_config(run, candidates={"num_shards": 2, "shard_index": 2})


def test_progress_counts_every_call_including_failed_ones(tmp_path, monkeypatch, capsys):
    """One line per call (interval 0) on a stream that is not a terminal, with images and failures;
    nothing when quiet. (A call that succeeded used to skip the progress line altogether.)"""
    from instructengine.progress import set_quiet

    run = tmp_path / "run"
    write_pairs(run, [("a small red circle", "two small red circles"), ("a purple elephant", "a small red circle"),
                      ("a small blue square", "a large blue square")])
    cfg = make_config(run, candidates={"n_candidates": 2, "instructions_per_call": 2})
    monkeypatch.setenv("INSTRUCTENGINE_PROGRESS_INTERVAL", "0")
    set_quiet(False)
    try:
        run_candidates(cfg)
    finally:
        set_quiet(None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("candidates:")]
    # 6 instructions in 3 calls; the second call (p0001_1, p0001_2) fails whole, then p0001_1 alone
    assert [ln.split(" (")[0] for ln in lines] == ["candidates: 1/3", "candidates: 2/3", "candidates: 3/3",
                                                   "candidates: 3/3"]
    assert lines[0].endswith("images=4") and lines[1].endswith("images=6 failed=1")
    assert "ETA" in lines[0] and " in " in lines[-1] and lines[-1].endswith("images=10 failed=1")
    (run / "candidates" / candidate_path("p0000_1", 0)).unlink()
    set_quiet(True)
    try:
        run_candidates(cfg)
    finally:
        set_quiet(None)
    assert "candidates:" not in capsys.readouterr().err
