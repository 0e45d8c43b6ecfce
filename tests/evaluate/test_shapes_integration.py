"""A ShapesWorld evaluation of two models (a base and a perturbed copy) through the harness, timed.

Slow (minutes on 2 CPU cores): ``pytest -m slow tests/evaluate/test_shapes_integration.py``.
"""

from __future__ import annotations

import json
import time

import pytest

from instructengine.config import validate_config
from instructengine.evaluate.config import EvalConfig
from instructengine.evaluate.report import report
from instructengine.evaluate.runner import evaluate

pytest.importorskip("instructengine.shapes.pipeline")


@pytest.mark.slow
def test_shapesbench_two_models_full_report_within_five_minutes(tmp_path):
    import torch

    torch.set_num_threads(2)
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"),
        "benchmark": {"name": "shapesbench"},
        "models": [{"name": "base", "kind": "shapes", "options": {"dtype": "bfloat16"}},
                   {"name": "perturbed", "kind": "shapes", "options": {"dtype": "bfloat16", "perturb": 0.05}}],
        "images_per_prompt": 2, "batch_size": 200, "score_batch_size": 400,
        "scorers": ["shapes_oracle", "shapes_clip", "shapes_aesthetic"],
        "report": {"average_metrics": [], "grid_prompts": 6, "grid_seeds": 2},
    })
    t0 = time.perf_counter()
    out = evaluate(cfg, log=print)
    t_eval = time.perf_counter() - t0
    paths = report(cfg, log=print)
    total = time.perf_counter() - t0
    js = json.loads(paths["json"].read_text())
    print(f"ShapesBench, 2 models x 400 images: eval {t_eval:.1f}s, total with report {total:.1f}s")
    sampling = 0.0
    for name, folder in out.items():
        m = json.loads((folder / "manifest.json").read_text())
        print(name, m["timings_s"], m["extra"].get("generation_images_per_s"))
        sampling += m["timings_s"]["generate"]
    assert js["n_images"] == 400 and "exact" in js["metrics"]
    print(f"harness time besides sampling: {total - sampling:.1f}s")
    assert total <= 300, f"two models on ShapesBench took {total:.0f} s (target: 5 minutes on 2 CPU cores)"


@pytest.mark.slow
def test_harness_time_at_shapesbench_size(tmp_path):
    """Everything but sampling, at ShapesBench size: an instant stand-in generator, the oracle, the report."""
    import torch

    torch.set_num_threads(2)
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"), "benchmark": {"name": "shapesbench"},
        "models": [{"name": "a", "kind": "eval_fakes:make_colour_generator"},
                   {"name": "b", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.1}}],
        "images_per_prompt": 2, "batch_size": 200, "score_batch_size": 400,
        "scorers": ["shapes_oracle", "eval_fakes:make_redness"],
        "report": {"average_metrics": [], "grid_prompts": 6, "grid_seeds": 2},
    })
    t0 = time.perf_counter()
    out = evaluate(cfg, log=lambda s: None)
    t1 = time.perf_counter()
    report(cfg, log=lambda s: None)
    t2 = time.perf_counter()
    evaluate(cfg, log=lambda s: None)
    t3 = time.perf_counter()
    print(f"evaluate {t1 - t0:.1f}s, report {t2 - t1:.1f}s, re-run with nothing to do {t3 - t2:.1f}s")
    for name, folder in out.items():
        print(name, json.loads((folder / "manifest.json").read_text())["timings_s"])
    assert t2 - t0 <= 60
