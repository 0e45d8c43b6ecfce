"""AGFSync's VQA score and GPT-4V judge protocols against a real scripted chat server on 127.0.0.1.

The references are transcriptions of AGFSync's steps, fed with what the scripted server answered:

* VQA (dpo_dataset/prompt/vqa_score.py): ``question_count = len(prompt["qa_pairs"])`` (every question
  of the 6 generations), an answer is a yes unless ``'no' in answer.lower() or 'b' in answer.lower()``,
  ``vqa_score = yes_count / question_count * 100``; a question our client could not get answered
  counts as not yes (it stays in the denominator).
* Judge: three requests per pair, a forced A/B choice with a reason; win rate = wins / (wins + losses).
"""

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
from instructengine.evaluate.runner import evaluate  # noqa: E402
from instructengine.scorers import ScorerContext, build_scorer  # noqa: E402

AGFSYNC_JUDGE = {
    "Which image do you prefer?": "general_preference",
    "Which image better fits the text description?": "prompt_alignment",
    "Disregarding the prompt, which image is more visually appealing?": "visual_appeal",
}

# per generation (seed), the questions the scripted LLM writes; 2 + 3 + 2 + 3 + 2 + 3 = 15 per prompt,
# with "Is there a square?" written twice (AGFSync keeps duplicates)
GENERATIONS = [
    ["Is the image mostly {c}?", "Is there a square?"],
    ["Is there a square?", "Is the square big?", "Is this unanswerable?"],
    ["Is the square flat?", "Is the image {c}dish?"],
    ["Is the square alone?", "Is the square in the centre?", "Is the square sharp?"],
    ["Is the square drawn?", "Is the square whole?"],
    ["Is the square visible?", "Is the square coloured?", "Is the background plain?"],
]


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


def _free_text_answer(question: str, red: bool) -> str:
    """Free-text answers, some of which AGFSync's substring rule reads oddly."""
    if "mostly red" in question:
        return "yes" if red else "No, it is not."
    if "mostly blue" in question:
        return "Yes" if not red else "nope"
    if "big" in question:
        return "a big one"  # contains "b": AGFSync reads a no
    if "dish" in question:
        return "Absolutely" if red else "maybe"  # "Absolutely" contains "b"; "maybe" is a yes
    if "centre" in question:
        return "yes" if red else "not really"
    return "yes"


class Recorder:
    def __init__(self):
        self.questions: dict[str, list[str]] = {}  # prompt -> every question written
        self.answers: dict[tuple[str, bool], str] = {}  # (question, red image) -> free-text answer
        self.judged: list[dict] = []

    def __call__(self, body):
        name = body["response_format"]["json_schema"]["name"]
        text, images = _texts_and_images(body)
        if name == "vqa_questions_agfsync":
            system, user = body["messages"]
            assert system["role"] == "system" and "at least 15 questions" in system["content"]
            assert user["role"] == "user" and body["temperature"] == 0.9
            prompt = user["content"]
            colour = "red" if "red" in prompt else "blue"
            qs = [q.format(c=colour) for q in GENERATIONS[body["seed"]]]
            self.questions.setdefault(prompt, []).extend(qs)
            # a bare list of AGFSync's records, as its system prompt asks
            return [{"question_id": j + 1, "question": q, "answer": "yes", "element_type": "object", "element": "square",
                     "flag": 0 if "coloured" in q else 1} for j, q in enumerate(qs)]
        if name == "vqa_answer_text":
            m = re.fullmatch(r"Question: (.*) Choices:\['yes','no'\] Answer:", text.splitlines()[0])
            assert m, text
            q, red = m.group(1), _redness(images[0]) > 0
            if "unanswerable" in q:
                return "I cannot tell."  # never JSON: re-asked, then dropped
            self.answers[(q, red)] = _free_text_answer(q, red)
            return {"answer": self.answers[(q, red)]}
        if name == "pairwise_judgement_agfsync":
            asked = [q for q in AGFSYNC_JUDGE if q in text]
            assert len(asked) == 1, text  # one question per request
            q = AGFSYNC_JUDGE[asked[0]]
            a_is_model = _redness(images[0]) > _redness(images[1])  # the model's images are redder
            if q == "visual_appeal" and "a green circle" in text:
                return "Both are nice."  # never valid: unanswered
            choice = {"general_preference": "A" if a_is_model else "B", "prompt_alignment": "A", "visual_appeal": "B"}[q]
            prompt = re.search(r'Prompt: "(.*)"', text).group(1)
            self.judged.append({"prompt": prompt, "question": q, "a_is_model": a_is_model, "choice": choice})
            return {"choice": choice, "reason": f"image {choice} looks better for {q}"}
        raise AssertionError(f"unexpected schema {name}")


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def server(recorder):
    srv = ScriptedServer(recorder).start()
    yield srv
    srv.stop()


def _llm(server, tmp_path):
    return {"base_url": server.base_url, "model": "scripted-vlm", "api_key_env": "INSTRUCTENGINE_TEST_NO_KEY",
            "max_retries": 0, "max_invalid_retries": 1, "backoff_base_s": 0.0, "concurrency": 4,
            "cache_path": str(tmp_path / "llm_cache.sqlite")}


def _agfsync_vqa_score(qa_pairs: list[str], answers: dict[str, str | None]) -> float:
    """prompt/vqa_score.py for one image: yes answers / every question, x100 (no answer: not a yes)."""
    question_count = len(qa_pairs)
    yes_count = 0
    for q in qa_pairs:
        image_answer = answers.get(q)
        if image_answer is None or "no" in image_answer.lower() or "b" in image_answer.lower():
            continue
        yes_count += 1
    return yes_count / question_count * 100


def test_agfsync_vqa_protocol_matches_agfsyncs_counting(server, recorder, tmp_path):
    ctx = ScorerContext(run_dir=str(tmp_path))
    vqa = build_scorer("vqa", {"protocol": "agfsync", "llm": _llm(server, tmp_path), "image_size": 32}, ctx)
    red, blue = Image.new("RGB", (16, 16), (220, 30, 30)), Image.new("RGB", (16, 16), (30, 30, 220))
    prompts = ["a red square", "a red square", "a blue square", "a blue square"]
    images = [red, blue, blue, red]
    got = vqa.score(images, prompts) * 100
    expected = []
    for im, p in zip(images, prompts):
        is_red = im is red
        qa_pairs = recorder.questions[p]
        assert len(qa_pairs) == 15 and qa_pairs.count("Is there a square?") == 2  # all kept: no cap, no de-duplication
        expected.append(_agfsync_vqa_score(qa_pairs, {q: recorder.answers.get((q, is_red)) for q in qa_pairs}))
    np.testing.assert_allclose(got, expected)
    # by hand for the red image of "a red square": 15 questions, no for "big" ("a big one"), "dish" ("Absolutely"),
    # and the unanswerable one: 12/15
    assert got[0] == pytest.approx(12 / 15 * 100)
    assert vqa.dropped == {"vqa_answer:invalid_answer:not_json": 4}  # unanswerable, once per image, in the denominator
    saved = json.loads((tmp_path / "vqa_questions.json").read_text())
    assert [q["generation"] for q in saved["a red square"]] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5]
    assert vqa.info["protocol"] == "agfsync" and vqa.info["max_questions"] is None


def test_agfsync_vqa_can_drop_flagged_questions_and_ours_stays_the_default(server, recorder, tmp_path):
    ctx = ScorerContext(run_dir=str(tmp_path))
    vqa = build_scorer("vqa", {"protocol": "agfsync", "drop_flagged": True, "llm": _llm(server, tmp_path)}, ctx)
    vqa.score([Image.new("RGB", (16, 16), (220, 30, 30))], ["a red square"])
    assert len(vqa.questions["a red square"]) == 14 and vqa.dropped["vqa_questions:flagged_invalid"] == 1
    qfile = tmp_path / "tifa.json"
    qfile.write_text(json.dumps([{"caption": "x", "question": "what colour?", "choices": ["red", "blue"], "answer": "red"}]))
    with pytest.raises(ValueError, match="answer_rule agfsync reads yes/no answers only"):
        build_scorer("vqa", {"protocol": "agfsync", "questions_file": str(qfile), "llm": _llm(server, tmp_path)}, ctx)
    ours = build_scorer("vqa", {"llm": _llm(server, tmp_path)}, ctx)
    assert (ours.options.protocol, ours.options.max_questions, ours.options.unanswered, ours.options.answer_rule) == (
        "instructengine", 8, "skip", "choices")


def test_agfsync_judge_protocol_forced_choice_win_rate(server, recorder, tmp_path):
    (tmp_path / "p.txt").write_text("a red car\na blue dog\na green circle\n")
    cfg = validate_config(EvalConfig, {
        "run_dir": str(tmp_path / "run"), "benchmark": {"name": "mini", "path": str(tmp_path / "p.txt")},
        "models": [{"name": "base", "kind": "eval_fakes:make_colour_generator"},
                   {"name": "redder", "kind": "eval_fakes:make_colour_generator", "options": {"red_bias": 0.3}}],
        "images_per_prompt": 2, "scorers": ["eval_fakes:make_redness"],
        "judge": {"llm": _llm(server, tmp_path), "image_size": 32, "protocol": "agfsync"},
        "report": {"bootstrap_samples": 20, "grid_prompts": 1},
    })
    evaluate(cfg, log=lambda s: None)
    out = judge_models(cfg, log=lambda s: None)["redder"]
    assert out["protocol"] == "agfsync" and out["win_rate"].startswith("win / (win + loss)")
    # reference: from the server's own record of which image was the model's and what it chose
    for q in ("general_preference", "prompt_alignment", "visual_appeal"):
        seen = [r for r in recorder.judged if r["question"] == q]
        wins = sum((r["choice"] == "A") == r["a_is_model"] for r in seen)
        d = out["questions"][q]
        assert d["pairs"] == len(seen) and d["win"] == pytest.approx(wins / len(seen))
        assert d["loss"] == pytest.approx(1 - wins / len(seen)) and d["tie"] is None
    assert out["questions"]["general_preference"]["win"] == 1.0
    # "always A" is pure position bias: its win rate is the share of comparisons that showed the model first
    model_first = [r["a_is_model"] for r in recorder.judged if r["question"] == "prompt_alignment"]
    assert 0 < sum(model_first) < len(model_first)
    assert out["questions"]["prompt_alignment"]["win"] == pytest.approx(np.mean(model_first))
    assert out["questions"]["visual_appeal"]["unanswered"] == 2 and out["questions"]["visual_appeal"]["pairs"] == 4
    assert out["dropped"] == {"judge:invalid_answer:not_json": 2}
    folder = tmp_path / "run" / "judge" / "mini" / "redder__vs__base"
    j = pd.read_parquet(folder / "judgments.parquet")
    assert len(j) == 6 * 3 - 2 and j["reason"].str.startswith("image ").all()
    assert (j.groupby(["prompt_index", "seed", "question"]).size() == 1).all()  # one order per comparison
    r = pd.read_parquet(folder / "results.parquet")
    assert set(r["outcome"]) == {"win", "loss", "unanswered"}
    from instructengine.evaluate.report import report

    md = Path(report(cfg, log=lambda s: None)["markdown"]).read_text()
    assert "## VLM judge (AGFSync's protocol: one order, forced A/B choice)" in md
