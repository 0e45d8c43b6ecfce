"""Every benchmark of ``benchmarks/`` runs in CI size (``--tiny``) and writes the JSON it promises;
the comparison steps they time compute the same thing as ours (else the timing would be meaningless)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    result = load(name).main(["--tiny", "--quiet", "--out", str(out), *extra])
    on_disk = json.loads(out.read_text())
    assert on_disk["benchmark"] == name and on_disk["machine"]["date_utc"]
    return on_disk if result is None else result


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_example_style_step_computes_our_cv_dpo_loss(tmp_path, kind, mode):
    """The transcribed diffusers-example step (4 calls of 2B, encodings inside the step) and ours (fused
    and eight calls, cached encodings) give the same loss and the same gradients on the same draws."""
    from instructengine.train.losses import cross_validation_dpo_loss
    from instructengine.train.steps import Encoder, combination_errors

    bench = load("cv_dpo_step")
    torch.manual_seed(0)
    comps = bench.build_components(kind, "tiny")
    adapter = bench.build_adapter(kind, comps).to("cpu", torch.float32, torch.float32)
    batch, data_cfg = bench.make_batch(tmp_path, 3, adapter.unet.config.sample_size * 2, kind)
    cached = Encoder(adapter, cache_text=True, cache_latents=True)
    cached.precompute([t for ts in batch["texts"] for t in ts], [p for ps in batch["images"] for p in ps], data_cfg)
    policy, reference, params = bench.policy_and_reference(adapter.unet, mode, 4, False)
    with torch.no_grad():  # LoRA starts at B=0 (policy == reference); move it off so the loss is not log 2
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    losses, grads = [], []
    for how in ("fused", "naive", "example", "example_cached"):
        g = torch.Generator().manual_seed(7)
        if how.startswith("example"):
            loss = bench.example_style_loss(adapter, cached if how == "example_cached" else Encoder(adapter), policy,
                                            reference, batch, g, 500.0, cached=how == "example_cached")
        else:
            m, r = combination_errors(adapter, cached, policy, reference, batch, "quad", g, fused=how == "fused")
            loss = cross_validation_dpo_loss(m, r, 500.0).mean()
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        for p in params:
            p.grad = None
    assert abs(losses[0] - 0.693147) > 1e-4 and grads[0].abs().max() > 0, "policy == reference: nothing compared"
    for loss, grad in zip(losses[1:], grads[1:]):
        assert loss == pytest.approx(losses[0], rel=2e-4), losses  # float rounding, amplified by beta
        assert ((grad - grads[0]).norm() / grads[0].norm()).item() < 1e-3  # same gradient up to float rounding


def _positive_variants(result: dict, key: str) -> dict:
    rows = {r["variant"]: r for r in result["variants"]}
    assert all(r[key] > 0 for r in rows.values()), rows
    return rows


def test_cv_dpo_step_benchmark_tiny(tmp_path):
    result = run("cv_dpo_step", tmp_path)
    rows = _positive_variants(result, "median_step_s")
    assert set(rows) == set(load("cv_dpo_step").VARIANTS)
    assert all(r["samples_per_s"] > 0 and r["time_vs_fused"] > 0 for r in rows.values())
    assert result["unet_inputs_per_call"] == 4 * result["batch_samples"] and result["unet_params_M"] > 0


def test_candidate_generation_benchmark_tiny(tmp_path):
    result = run("candidate_generation", tmp_path)
    rows = _positive_variants(result, "images_per_s")
    n, instructions = result["images"], result["instructions"]
    # 1 pair x 2 candidates, 2 instructions per batched call: 1 call; one per instruction; one per image
    assert (rows["batched"]["calls"], rows["per_instruction"]["calls"], rows["per_image"]["calls"]) == (1, instructions, n)
    assert rows["per_image"]["speed_vs_per_image"] == 1.0


def test_scoring_benchmark_tiny(tmp_path):
    result = run("scoring", tmp_path)
    rows = _positive_variants(result, "images_per_s")
    assert set(rows) == {"shared", "one_at_a_time"} and len(result["scorers"]) == 6
    assert rows["shared"]["decodes_per_image"] == 1 and rows["one_at_a_time"]["decodes_per_image"] == 6
    assert result["max_score_difference"] <= 1e-4


def test_llm_stages_benchmark_tiny(tmp_path):
    result = run("llm_stages", tmp_path)
    runs = {r["run"]: r for r in result["runs"]}
    assert result["requests_per_full_run"] > 100
    assert runs["concurrency_1"]["server_requests"] == runs["concurrency_32"]["server_requests"] > 0
    assert runs["concurrency_1"]["peak_in_flight"] == 1 and runs["concurrency_32"]["peak_in_flight"] > 1
    assert result["rerun_requests"] == 0 and result["cache_only_requests"] == 0
    assert runs["cache_only"]["cache_hits"] == result["requests_per_full_run"]
    assert all(r["seconds"] > 0 for r in runs.values())


def test_fused_vs_naive_benchmark_tiny(tmp_path):
    out = tmp_path / "fvn.json"
    result = load("fused_vs_naive").main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["median_step_s"]["fused"] > 0 and result["median_step_s"]["naive"] > 0
    assert result["unet_calls"] == {"fused": 2, "naive": 8}


def test_llm_concurrency_benchmark_tiny(tmp_path):
    out = tmp_path / "llm.json"
    result = load("llm_concurrency").main(["--tiny", "--in-process", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["http_requests"] == result["requests"] == 64 and result["server_peak_in_flight"] > 1
    assert result["parallel_requests_per_s"] > 0 and result["speedup"] > 0
    assert result["rate_limited_429s"] > 0 and result["rate_limited_dropped"] == {}


@pytest.mark.slow
def test_main_job_benchmark_tiny(tmp_path):
    result = run("main_job", tmp_path)
    assert set(result["main_stages_s"]) == {"data", "train", "eval", "report"}
    assert all(v > 0 for v in result["main_stages_s"].values()) and result["rerun_s"] > 0
    stages = {r["stage"]: r for r in result["stages"]}
    assert {"taxonomy", "entities", "instructions", "candidates", "train/cv-dpo"} <= set(stages)
    assert stages["train/cv-dpo"]["total_s"] > 0


@pytest.mark.slow
def test_shapes_eval_benchmark_tiny(tmp_path):
    out = tmp_path / "se.json"
    assert load("shapes_eval").main(["--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_images_per_model"] == 6 and result["total_s"] > 0
    assert result["timings_base"]["generate"] > 0
