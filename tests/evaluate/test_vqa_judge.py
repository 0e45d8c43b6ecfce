"""VQA faithfulness and the pairwise VLM judge against a real scripted chat server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from scripted_server import ScriptedServer  # noqa: E402

from instructengine.config import validate_config  # noqa: E402
from instructengine.evaluate.config import EvalConfig  # noqa: E402
from instructengine.evaluate.judge import judge_models  # noqa: E402
from instructengine.evaluate.report import report  # noqa: E402
from instructengine.evaluate.runner import evaluate  # noqa: E402
from instructengine.scorers import ScorerContext, build_scorer  # noqa: E402


def _texts_and_images(body):
    texts, images = [], []
    for msg in body["messages"]:
        content = msg["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content:
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float))
    return "\n".join(texts), images


def _redness(a):
    return a[..., 0].mean() - a[..., 2].mean()


SEEN_SIZES: list[tuple[int, ...]] = []


def vlm(body):
    """A scripted LLM/VLM: writes questions from the prompt's words, answers by looking at pixels."""
    name = body["response_format"]["json_schema"]["name"]
    text, images = _texts_and_images(body)
    if name == "vqa_questions":
        prompt = re.search(r'Prompt: "(.*)"', text).group(1)
        if "unanswerable" in prompt:
            return {"questions": [{"question": "Is this unanswerable?"}]}
        colour = "red" if "red" in prompt else "blue"
        return {"questions": [{"question": f"Is the image mostly {colour}?", "element": colour},
                              {"question": "Is there a square?", "element": "square"}]}
    if name == "vqa_answer":
        q = re.search(r"Question: (.*)", text).group(1)
        choices = re.search(r"Choices: (.*)", text).group(1).split(", ")
        r = _redness(images[0])
        SEEN_SIZES.append(images[0].shape)
        if "unanswerable" in q:
            return {"answer": "maybe"}  # not one of the choices: re-asked, then dropped
        if "mostly red" in q:
            return {"answer": "yes" if r > 0 else "no"}
        if "mostly blue" in q:
            return {"answer": "yes" if r < 0 else "no"}
        if "what colour" in q:
            return {"answer": "red" if r > 0 else "blue"}
        return {"answer": choices[0]}
    if name == "pairwise_judgement":
        if "a green circle" in text and _redness(images[0]) < _redness(images[1]):
            return "I cannot decide."  # one order of one pair never gets a valid answer
        redder = "1" if _redness(images[0]) > _redness(images[1]) else "2"
        return {"general_preference": redder, "prompt_alignment": "tie", "visual_appeal": "1"}  # appeal: pure position bias
    raise AssertionError(f"unexpected schema {name}")


@pytest.fixture
def server():
    srv = ScriptedServer(vlm).start()
    yield srv
    srv.stop()


def _llm(server, tmp_path):
    return {"base_url": server.base_url, "model": "scripted-vlm", "api_key_env": "INSTRUCTENGINE_TEST_NO_KEY",
            "max_retries": 0, "max_invalid_retries": 1, "backoff_base_s": 0.0, "concurrency": 4,
            "cache_path": str(tmp_path / "llm_cache.sqlite")}


def _solid(rgb):
    return Image.new("RGB", (24, 24), rgb)


def test_vqa_accuracy_per_image_with_generated_questions(server, tmp_path):
    SEEN_SIZES.clear()
    ctx = ScorerContext(run_dir=str(tmp_path))
    vqa = build_scorer("vqa", {"llm": _llm(server, tmp_path), "image_size": 64}, ctx)
    red, blue = _solid((220, 30, 30)), _solid((30, 30, 220))
    prompts = ["a red square", "a red square", "a blue square", "an unanswerable thing"]
    got = vqa.score([red, blue, blue, red], prompts)
    np.testing.assert_allclose(got[:3], [1.0, 0.5, 1.0])
    assert np.isnan(got[3])  # no question answered: not measured, not 0
    assert vqa.dropped == {"vqa_answer:invalid_answer:schema": 1}
    questions = json.loads((tmp_path / "vqa_questions.json").read_text())
    assert [q["question"] for q in questions["a red square"]] == ["Is the image mostly red?", "Is there a square?"]
    assert set(SEEN_SIZES) == {(64, 64, 3)}  # the 24x24 images reached the VLM enlarged to image_size
    before = server.total
    again = vqa.score([red, blue], prompts[:2])  # everything cached: no request
    np.testing.assert_allclose(again, [1.0, 0.5])
    assert server.total == before


def test_vqa_with_a_tifa_style_question_file(server, tmp_path):
    qfile = tmp_path / "tifa.json"
    qfile.write_text(json.dumps([
        {"caption": "a red square", "question": "what colour is the square?", "choices": ["red", "blue", "green"], "answer": "red"},
        {"caption": "a red square", "question": "is there a square?", "choices": ["yes", "no"], "answer": "yes"},
    ]))
    vqa = build_scorer("vqa", {"llm": _llm(server, tmp_path), "questions_file": str(qfile)}, ScorerContext())
    got = vqa.score([_solid((200, 0, 0)), _solid((0, 0, 200)), _solid((0, 0, 200))], ["a red square", "a red square", "not in file"])
    np.testing.assert_allclose(got[:2], [1.0, 0.5])
    assert np.isnan(got[2]) and vqa.dropped["vqa_questions:not_in_file"] == 1
    with pytest.raises(ValueError, match="the answer cache needs a place"):
        build_scorer("vqa", {"llm": {"base_url": server.base_url}}, ScorerContext())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"caption": "x", "question": "q?", "choices": ["a", "b"], "answer": "c"}]))
    with pytest.raises(ValueError, match="expected answer 'c' is not one of its choices"):
        build_scorer("vqa", {"llm": _llm(server, tmp_path), "questions_file": str(bad)}, ScorerContext())


def test_vqa_column_and_failures_through_the_runner(server, tmp_path):
    (tmp_path / "p.txt").write_text("a red square\nan unanswerable thing\n")
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"), "benchmark": {"name": "mini", "path": str(tmp_path / "p.txt")},
        "models": [{"name": "m", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.4}}],
        "images_per_prompt": 2, "scorers": [{"kind": "vqa", "options": {"llm": _llm(server, tmp_path)}}],
    })
    folder = evaluate(cfg, log=lambda s: None)["m"]
    scores = pd.read_parquet(folder / "scores.parquet")
    assert scores.loc[scores["prompt_index"] == 0, "vqa"].tolist() == [1.0, 1.0]
    assert scores.loc[scores["prompt_index"] == 1, "vqa"].isna().all()
    m = json.loads((folder / "manifest.json").read_text())
    assert m["extra"]["scorer_failures"] == {"vqa_answer:invalid_answer:schema": 2}
    assert m["extra"]["not_measured"] == {"vqa": 2}
    s = json.loads((folder / "summary.json").read_text())
    assert s["metrics"]["vqa"]["n"] == 2 and s["metrics"]["vqa"]["mean"] == 1.0


def test_pairwise_judge_both_orders_cancel_position_bias(server, tmp_path):
    (tmp_path / "p.txt").write_text("a red car\na blue dog\na green circle\n")
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"), "benchmark": {"name": "mini", "path": str(tmp_path / "p.txt")},
        "models": [{"name": "base", "kind": "eval_fakes:make_colour_generator"},
                   {"name": "redder", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.3}}],
        "images_per_prompt": 2, "scorers": ["eval_fakes:make_redness"],
        "judge": {"llm": _llm(server, tmp_path), "image_size": 64},
        "report": {"bootstrap_samples": 20, "grid_prompts": 1},
    })
    evaluate(cfg, log=lambda s: None)
    out = judge_models(cfg, log=lambda s: None)["redder"]
    q = out["questions"]
    # "a green circle" (prompt 2) never gets a valid answer in one order: its 2 pairs are unanswered
    assert q["general_preference"] == {"win": 1.0, "tie": 0.0, "loss": 0.0, "pairs": 4, "unanswered": 2}
    assert q["prompt_alignment"]["tie"] == 1.0
    assert q["visual_appeal"]["tie"] == 1.0 and q["visual_appeal"]["win"] == 0.0  # "always image 1" cancels out
    assert out["dropped"] == {"judge:invalid_answer:not_json": 2}
    # 10 answered orders: general "1" in the 6 model-first orders, "2" in the 4 base-first ones; appeal always "1"
    assert out["position"]["first_image_chosen"] == pytest.approx((6 + 10) / 20)
    assert out["position"]["orders_agree"] == pytest.approx(2 / 3)
    folder = tmp_path / "run" / "judge" / "mini" / "redder__vs__base"
    j = pd.read_parquet(folder / "judgments.parquet")
    assert set(j["order"]) == {"ab", "ba"} and len(j) == (6 * 2 - 2) * 3
    r = pd.read_parquet(folder / "results.parquet")
    assert (r["outcome"] == "unanswered").sum() == 2 * 3
    md = report(cfg, log=lambda s: None)["markdown"].read_text()
    assert "## VLM judge (both image orders, ties allowed)" in md and "| redder | general_preference | 100.0% |" in md
