"""VQA faithfulness (TIFA / AGFSync): questions per prompt, answered by a VLM; accuracy per image.

1. **Questions.** For each distinct prompt an LLM writes up to ``max_questions`` yes/no questions
   whose answer is "yes" for an image that follows the prompt (AGFSync), or they come from a file
   written beforehand (``questions_file``: TIFA's question file, or any JSON/JSONL records with a
   prompt (``prompt``/``caption``/``text``), a ``question``, optional ``choices`` and the expected
   ``answer``; TIFA's multiple-choice questions keep their choices).
2. **Answers.** A VLM sees the image (resized so its longer side is ``image_size``) and one
   question with its choices and picks one; an answer outside the choices is re-asked by the
   client (the answer schema lists the choices), then dropped.
3. **Score** of an image = correct answers / answered questions. A question that got no valid
   answer is left out and counted under its reason (``scorer.dropped``); an image with no answered
   question, or whose prompt got no questions, scores NaN ("not measured"), never 0.

Every call goes through :mod:`instructengine.llm` (retries, pacing, SQLite cache), so a re-run
asks nothing twice. ``instructengine.llm.errors.PermanentLLMError`` (bad key, unknown model)
aborts the run.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field, create_model

from instructengine.config import Config, validate_config
from instructengine.scorers.base import ScorerContext, check_batch

__all__ = ["Question", "VQAOptions", "VQAScorer", "make_vqa_scorer"]


class Question(BaseModel):
    question: str
    choices: list[str] = Field(default_factory=lambda: ["yes", "no"])
    answer: str = "yes"
    element: str = ""


class _QuestionItem(BaseModel):
    question: str = Field(min_length=3, max_length=300)
    element: str = ""


class QuestionList(BaseModel):
    """The LLM's answer when asked to write questions."""

    schema_name: ClassVar[str] = "vqa_questions"
    questions: list[_QuestionItem] = Field(min_length=1, max_length=30)


def _answer_schema(choices: list[str]) -> type[BaseModel]:
    """``{"answer": <one of choices>}`` as a pydantic model (so an off-list answer is re-asked)."""
    return _answer_schema_cached(tuple(choices))


@lru_cache(maxsize=256)
def _answer_schema_cached(choices: tuple[str, ...]) -> type[BaseModel]:
    model = create_model("VQAAnswer", answer=(Literal[choices], ...))  # type: ignore[valid-type]
    model.schema_name = "vqa_answer"  # type: ignore[attr-defined]
    return model


def _llm_config(data: dict[str, Any], what: str):
    from instructengine.llm.config import LLMConfig

    data = {"temperature": 0.0, "max_tokens": 512, **data}  # a judge answers deterministically and briefly
    return validate_config(LLMConfig, data, what)


class VQAOptions(Config):
    llm: dict[str, Any] = Field(default_factory=dict, description="instructengine.llm settings of the VLM that answers (base_url, model, ...)")
    question_llm: dict[str, Any] | None = Field(None, description="settings of the LLM that writes the questions (default: `llm`)")
    questions_file: str | None = Field(None, description="pre-written questions (TIFA-style JSON/JSONL) instead of asking the LLM")
    max_questions: int = Field(8, ge=1, le=30, description="questions kept per prompt")
    image_size: int = Field(512, ge=16, description="longer side of the image sent to the VLM (pixels)")


def _resize(image: Any, size: int) -> Any:
    from PIL import Image

    w, h = image.size
    scale = size / max(w, h)
    if scale == 1:
        return image
    # small renders (ShapesWorld 32x32) are enlarged with hard edges, large ones shrunk smoothly
    resample = Image.NEAREST if scale > 1 else Image.BICUBIC
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def load_questions_file(path: str | Path) -> dict[str, list[Question]]:
    """Read prompt -> questions from a JSON list / JSONL file of question records.

    Raises:
        ValueError: a record without a prompt or question, or an expected answer not in its choices.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if p.suffix == ".jsonl" else json.loads(text)
    if not isinstance(records, list):
        raise ValueError(f"{p}: expected a JSON list of question records")
    out: dict[str, list[Question]] = {}
    for i, r in enumerate(records):
        prompt = r.get("prompt") or r.get("caption") or r.get("text")
        if not prompt or not r.get("question"):
            raise ValueError(f"{p}: record {i} needs a prompt (prompt/caption/text) and a question")
        choices = [str(c) for c in (r.get("choices") or ["yes", "no"])]
        answer = str(r.get("answer", "yes"))
        if answer not in choices:
            raise ValueError(f"{p}: record {i}: expected answer {answer!r} is not one of its choices {choices}")
        out.setdefault(prompt, []).append(Question(question=r["question"], choices=choices, answer=answer,
                                                   element=str(r.get("element", ""))))
    return out


class VQAScorer:
    """``score(images, prompts)`` -> fraction of VQA questions answered as expected (NaN if none answered)."""

    name = "vqa"
    columns = ("vqa",)

    def __init__(self, options: VQAOptions, run_dir: str | None):
        self.options = options
        self.answer_cfg = _llm_config(options.llm, "vqa.llm")
        self.question_cfg = _llm_config(options.question_llm if options.question_llm is not None else options.llm, "vqa.question_llm")
        self.run_dir = run_dir
        for what, cfg in (("llm", self.answer_cfg), ("question_llm", self.question_cfg)):
            if cfg.cache and not cfg.cache_path and run_dir is None:
                raise ValueError(f"vqa.{what}: the answer cache needs a place: set cache_path, cache: false, or run the scorer with a run_dir")
        self.questions: dict[str, list[Question]] = {}
        self.fixed = load_questions_file(options.questions_file) if options.questions_file else None
        self.dropped: Counter[str] = Counter()
        self.usage: dict[str, Any] = {}
        self.info = {"answer_model": self.answer_cfg.model, "question_model": None if self.fixed is not None else self.question_cfg.model,
                     "questions_file": options.questions_file, "max_questions": options.max_questions}

    def score(self, images, prompts) -> np.ndarray:
        check_batch(self.name, images, prompts)
        return asyncio.run(self._score(list(images), list(prompts)))

    async def _score(self, images: list[Any], prompts: list[str]) -> np.ndarray:
        from instructengine.llm import build_client

        await self._ensure_questions(sorted(set(prompts)))
        async with build_client(self.answer_cfg, self.run_dir) as client:
            tasks = []
            for i, (im, p) in enumerate(zip(images, prompts)):
                small = _resize(im, self.options.image_size)
                for q in self.questions.get(p, []):
                    tasks.append(self._ask(client, i, small, q))
            results = await asyncio.gather(*tasks)
            self._add_usage(client)
        correct = np.zeros(len(images))
        answered = np.zeros(len(images))
        for i, ok in results:
            if ok is not None:
                answered[i] += 1
                correct[i] += ok
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(answered > 0, correct / np.maximum(answered, 1), np.nan)

    async def _ask(self, client: Any, i: int, image: Any, q: Question) -> tuple[int, float | None]:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm.messages import user_message

        text = render("vqa_answer", self.answer_cfg.prompts_dir, question=q.question, choices=q.choices)
        try:
            ans = await client.complete_json([user_message(text, [image])], _answer_schema(q.choices), seed=0)
        except DropItem as err:
            self.dropped[f"vqa_answer:{err.reason}"] += 1
            return i, None
        return i, float(ans.answer.strip().lower() == q.answer.strip().lower())

    async def _ensure_questions(self, prompts: list[str]) -> None:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm import build_client
        from instructengine.llm.messages import user_message

        todo = [p for p in prompts if p not in self.questions]
        if not todo:
            return
        if self.fixed is not None:
            for p in todo:
                qs = self.fixed.get(p, [])
                if not qs:
                    self.dropped["vqa_questions:not_in_file"] += 1
                self.questions[p] = qs[: self.options.max_questions]
            return
        async with build_client(self.question_cfg, self.run_dir) as client:

            async def one(p: str) -> None:
                text = render("vqa_questions", self.question_cfg.prompts_dir, prompt=p, max_questions=self.options.max_questions)
                try:
                    ans = await client.complete_json([user_message(text)], QuestionList, seed=0)
                except DropItem as err:
                    self.dropped[f"vqa_questions:{err.reason}"] += 1
                    self.questions[p] = []
                    return
                self.questions[p] = [Question(question=q.question.strip(), element=q.element)
                                     for q in ans.questions[: self.options.max_questions]]

            await asyncio.gather(*(one(p) for p in todo))
            self._add_usage(client)
        self._save_questions()

    def _add_usage(self, client: Any) -> None:
        snap = client.usage.snapshot()
        for k, v in snap.items():
            if isinstance(v, (int, float)) and v is not None:
                self.usage[k] = self.usage.get(k, 0) + v

    def _save_questions(self) -> None:
        if self.run_dir is None:
            return
        from instructengine.runs import atomic_write_json

        atomic_write_json(Path(self.run_dir) / "vqa_questions.json",
                          {p: [q.model_dump() for q in qs] for p, qs in sorted(self.questions.items())})


def make_vqa_scorer(options: dict[str, Any], ctx: ScorerContext) -> VQAScorer:
    return VQAScorer(validate_config(VQAOptions, options, "scorer vqa"), ctx.run_dir)
