"""VQA faithfulness (TIFA / AGFSync): questions per prompt, answered by a VLM; accuracy per image.

Two protocols (``protocol``), each a set of defaults for the options below:

* ``instructengine`` (ours, the default): one LLM call writes at most ``max_questions`` (8) yes/no
  questions per prompt; the VLM picks one of the question's choices (an answer outside them is
  re-asked, then dropped); score = correct / *answered* questions. Deviates from AGFSync in the
  question count, the prompts, and in leaving unanswered questions out of the denominator.
* ``agfsync`` (AGFSync's ``dpo_dataset/gemini/gemini.py`` + ``blip2_vqa.py`` + ``prompt/vqa_score.py``):
  ``question_generations`` = 6 calls per prompt, each asked (system prompt + the prompt text as user
  message) for at least ``min_questions`` = 15 questions whose answer is "yes", all of them kept
  (no cap, no de-duplication); each question is put to the VLM as ``Question: <q> Choices:['yes','no']
  Answer:`` with a free-text answer, read by AGFSync's rule (an answer containing "no" or the letter
  "b" is a no, anything else a yes); score = yes answers / *all* questions (an unanswered question
  counts as not yes). AGFSync reports it x100: the baseline's ``scale: 100``.

1. **Questions** come from the LLM, or from a file written beforehand (``questions_file``: TIFA's
   question file, or any JSON/JSONL records with a prompt (``prompt``/``caption``/``text``), a
   ``question``, optional ``choices`` and the expected ``answer``; TIFA's multiple-choice questions
   keep their choices).
2. **Answers.** A VLM sees the image (resized so its longer side is ``image_size``) and one question.
3. **Score** of an image: see the protocols. A question that got no valid answer is counted under
   its reason (``scorer.dropped``); an image whose prompt got no questions, or (``unanswered: skip``)
   with no answered question, scores NaN ("not measured"), never 0.

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
from pydantic import BaseModel, Field, create_model, model_validator

from instructengine.config import Config, validate_config
from instructengine.scorers.base import ScorerContext, check_batch

__all__ = ["VQA_PROTOCOLS", "Question", "VQAOptions", "VQAScorer", "agfsync_answer_is_yes", "make_vqa_scorer"]


class Question(BaseModel):
    question: str
    choices: list[str] = Field(default_factory=lambda: ["yes", "no"])
    answer: str = "yes"
    element: str = ""
    element_type: str = ""
    generation: int = 0


class _QuestionItem(BaseModel):
    question: str = Field(min_length=3, max_length=300)
    element: str = ""


class QuestionList(BaseModel):
    """The LLM's answer when asked to write questions."""

    schema_name: ClassVar[str] = "vqa_questions"
    questions: list[_QuestionItem] = Field(min_length=1, max_length=30)


class _AgfsyncQuestionItem(BaseModel):
    question_id: int | str | None = None
    question: str = Field(min_length=3, max_length=300)
    answer: str = "yes"
    element_type: str = ""
    element: str = ""
    flag: int | str = 1


class AgfsyncQuestionList(BaseModel):
    """AGFSync's question answer: a list of question records (bare, as AGFSync asks, or under "questions")."""

    schema_name: ClassVar[str] = "vqa_questions_agfsync"
    questions: list[_AgfsyncQuestionItem] = Field(min_length=1, max_length=100)

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"questions": data} if isinstance(data, list) else data


class TextAnswer(BaseModel):
    """A free-text answer (AGFSync's BLIP-2 answers in free text, read by :func:`agfsync_answer_is_yes`)."""

    schema_name: ClassVar[str] = "vqa_answer_text"
    answer: str = Field(max_length=500)


def agfsync_answer_is_yes(answer: str) -> bool:
    """AGFSync's reading of a free-text answer (prompt/vqa_score.py): "no" or the letter "b" anywhere
    in it (lower-cased) means no, anything else means yes."""
    a = answer.lower()
    return not ("no" in a or "b" in a)


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


#: protocol -> the defaults it gives to the options the user leaves unset
VQA_PROTOCOLS: dict[str, dict[str, Any]] = {
    "instructengine": {"max_questions": 8, "question_generations": 1, "min_questions": None, "question_temperature": None,
                       "drop_flagged": False, "answer_rule": "choices", "unanswered": "skip"},
    "agfsync": {"max_questions": None, "question_generations": 6, "min_questions": 15, "question_temperature": 0.9,
                "drop_flagged": False, "answer_rule": "agfsync", "unanswered": "wrong"},
}


class VQAOptions(Config):
    protocol: Literal["instructengine", "agfsync"] = Field(
        "instructengine",
        description="instructengine (ours: <= 8 questions from one call, choice answers, unanswered questions left out) "
        "or agfsync (6 calls of >= 15 questions each, all kept, AGFSync's prompts and yes/no reading, every question "
        "in the denominator); sets the defaults of the options below and picks the prompt templates",
    )
    llm: dict[str, Any] = Field(default_factory=dict, description="instructengine.llm settings of the VLM that answers (base_url, model, ...)")
    question_llm: dict[str, Any] | None = Field(None, description="settings of the LLM that writes the questions (default: `llm`)")
    questions_file: str | None = Field(None, description="pre-written questions (TIFA-style JSON/JSONL) instead of asking the LLM")
    max_questions: int | None = Field(None, ge=1, description="questions kept per prompt (instructengine: 8; agfsync: null = all)")
    question_generations: int | None = Field(
        None, ge=1, le=20, description="question-writing calls per prompt (seeds 0..n-1), their questions concatenated "
        "without de-duplication (instructengine: 1; agfsync: 6)")
    min_questions: int | None = Field(None, ge=1, description="agfsync template: questions asked for per call, at least (agfsync: 15)")
    question_temperature: float | None = Field(
        None, ge=0, description="sampling temperature of the question calls (null: the question LLM's; agfsync: 0.9, "
        "Gemini Pro 1.0's default, which AGFSync's script left unset, so its 6 calls differ)")
    drop_flagged: bool | None = Field(None, description="agfsync questions: drop those the LLM flagged 0 ('not mentioned in the text'); AGFSync keeps them")
    answer_rule: Literal["choices", "agfsync"] | None = Field(
        None, description="choices: the VLM must answer one of the choices (re-asked otherwise); agfsync: free-text answer, "
        "'no' or 'b' in it means no, else yes")
    unanswered: Literal["skip", "wrong"] | None = Field(
        None, description="a question that got no valid answer: skip (left out of the denominator, ours) or wrong "
        "(counted as not yes, AGFSync)")
    image_size: int = Field(512, ge=16, description="longer side of the image sent to the VLM (pixels)")

    @model_validator(mode="after")
    def _protocol_defaults(self) -> "VQAOptions":
        for key, value in VQA_PROTOCOLS[self.protocol].items():
            if getattr(self, key) is None and value is not None:
                object.__setattr__(self, key, value)
        return self


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
    """``score(images, prompts)`` -> fraction of VQA questions answered as expected (NaN if not measured)."""

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
        if self.fixed is not None and options.answer_rule == "agfsync":
            odd = next((q for qs in self.fixed.values() for q in qs if sorted(c.lower() for c in q.choices) != ["no", "yes"]), None)
            if odd is not None:
                raise ValueError(f"vqa: answer_rule agfsync reads yes/no answers only, but {options.questions_file} asks "
                                 f"{odd.question!r} with choices {odd.choices}; use answer_rule: choices")
        self.dropped: Counter[str] = Counter()
        self.usage: dict[str, Any] = {}
        self.info = {"protocol": options.protocol, "answer_model": self.answer_cfg.model,
                     "question_model": None if self.fixed is not None else self.question_cfg.model,
                     "questions_file": options.questions_file, "max_questions": options.max_questions,
                     "question_generations": options.question_generations, "answer_rule": options.answer_rule,
                     "unanswered": options.unanswered}

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
        asked = np.array([len(self.questions.get(p, [])) for p in prompts], dtype=float)
        correct = np.zeros(len(images))
        answered = np.zeros(len(images))
        for i, ok in results:
            if ok is not None:
                answered[i] += 1
                correct[i] += ok
        denominator = answered if self.options.unanswered == "skip" else asked
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, correct / np.maximum(denominator, 1), np.nan)

    async def _ask(self, client: Any, i: int, image: Any, q: Question) -> tuple[int, float | None]:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm.messages import user_message

        agfsync = self.options.answer_rule == "agfsync"
        template = "vqa_answer_agfsync" if agfsync else "vqa_answer"
        text = render(template, self.answer_cfg.prompts_dir, question=q.question, choices=q.choices)
        schema = TextAnswer if agfsync else _answer_schema(q.choices)
        try:
            ans = await client.complete_json([user_message(text, [image])], schema, seed=0)
        except DropItem as err:
            self.dropped[f"vqa_answer:{err.reason}"] += 1
            return i, None
        if agfsync:
            said = "yes" if agfsync_answer_is_yes(ans.answer) else "no"
            return i, float(said == q.answer.strip().lower())
        return i, float(ans.answer.strip().lower() == q.answer.strip().lower())

    async def _ensure_questions(self, prompts: list[str]) -> None:
        from instructengine.llm import build_client

        todo = [p for p in prompts if p not in self.questions]
        if not todo:
            return
        cap = self.options.max_questions
        if self.fixed is not None:
            for p in todo:
                qs = self.fixed.get(p, [])
                if not qs:
                    self.dropped["vqa_questions:not_in_file"] += 1
                self.questions[p] = qs[:cap]
            return
        async with build_client(self.question_cfg, self.run_dir) as client:

            async def one(p: str) -> None:
                gens = await asyncio.gather(*(self._write_questions(client, p, g) for g in range(self.options.question_generations)))
                self.questions[p] = [q for gen in gens for q in gen][:cap]

            await asyncio.gather(*(one(p) for p in todo))
            self._add_usage(client)
        self._save_questions()

    async def _write_questions(self, client: Any, prompt: str, generation: int) -> list[Question]:
        """One question-writing call (seed = ``generation``); [] when it failed (counted)."""
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm.messages import system_message, user_message

        o, dirs = self.options, self.question_cfg.prompts_dir
        try:
            if o.protocol == "agfsync":
                system = render("vqa_questions_agfsync", dirs, min_questions=o.min_questions)
                ans = await client.complete_json([system_message(system), user_message(prompt)], AgfsyncQuestionList,
                                                 seed=generation, temperature=o.question_temperature)
            else:
                text = render("vqa_questions", dirs, prompt=prompt, max_questions=o.max_questions)
                ans = await client.complete_json([user_message(text)], QuestionList, seed=generation,
                                                 temperature=o.question_temperature)
        except DropItem as err:
            self.dropped[f"vqa_questions:{err.reason}"] += 1
            return []
        out = []
        for q in ans.questions:
            if o.protocol == "agfsync" and o.drop_flagged and str(q.flag).strip() == "0":
                self.dropped["vqa_questions:flagged_invalid"] += 1
                continue
            # AGFSync counts a "yes" as right whatever answer the LLM wrote down (prompt/vqa_score.py)
            out.append(Question(question=q.question.strip(), element=q.element,
                                element_type=getattr(q, "element_type", ""), generation=generation))
        return out

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
