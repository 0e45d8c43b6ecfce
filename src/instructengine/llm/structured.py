"""Structured outputs: the JSON schema a call expects, and turning raw answer text into it.

A call names a pydantic model; :func:`response_format` turns it into the request's
``response_format`` and :func:`parse_answer` validates the answer text against the same model.
Every way an answer can be wrong gets a short kind (the drop reason's suffix):

* ``truncated`` - the server stopped at ``max_tokens`` (``finish_reason == "length"``);
* ``refusal`` / ``empty`` - no content;
* ``not_json`` - no JSON object could be read from the text;
* ``schema`` - JSON, but not of the expected shape.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["AnswerProblem", "parse_answer", "repair_message", "response_format", "schema_of", "strict_schema_of"]

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


class AnswerProblem(ValueError):
    """An answer that does not satisfy the schema; ``kind`` is one of the kinds listed above."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@functools.lru_cache(maxsize=None)
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema (computed once per model; a copy, so callers may change it)."""
    return copy.deepcopy(_schema(model))


@functools.lru_cache(maxsize=None)
def _strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    return to_strict_json_schema(model)


def strict_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The schema in the subset OpenAI's strict mode accepts, made by the openai SDK's own helper
    (the one ``client.chat.completions.parse`` uses): every object ``additionalProperties:
    false``, every property required (a field with a default is still always answered), nested
    definitions and references included."""
    return copy.deepcopy(_strict_schema(model))


def response_format(model: type[BaseModel], mode: str, strict: bool = False) -> dict[str, Any] | None:
    """The ``response_format`` request field for ``mode`` (json_schema, json_object or none);
    with ``strict`` the schema is :func:`strict_schema_of`'s."""
    if mode == "json_schema":
        schema = _strict_schema(model) if strict else _schema(model)
        return {"type": "json_schema", "json_schema": {"name": schema_name(model), "schema": schema, "strict": strict}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def schema_name(model: type[BaseModel]) -> str:
    """The schema's name in requests: the model's ``schema_name`` class attribute, else its class name."""
    return str(getattr(model, "schema_name", None) or model.__name__)


def _extract_json(text: str) -> Any:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # Prose around one JSON value ("Sure! {...} Hope this helps"): decode from the first bracket
    # only; trying later brackets could accept an inner fragment of a cut-off answer.
    first = re.search(r"[{\[]", text)
    if first:
        try:
            return json.JSONDecoder().raw_decode(text, first.start())[0]
        except json.JSONDecodeError:
            pass
    raise AnswerProblem("not_json", f"no JSON value in the answer (starts {text[:80]!r})")


def parse_answer(content: str | None, model: type[M], finish_reason: str | None = None, refusal: str | None = None) -> M:
    """Validate an answer's text against ``model``.

    Raises:
        AnswerProblem: with the kind of problem (see the module docstring).
    """
    if refusal:
        raise AnswerProblem("refusal", refusal[:200])
    if finish_reason == "length":
        raise AnswerProblem("truncated", "the answer was cut off at max_tokens")
    if content is None or not content.strip():
        raise AnswerProblem("empty", "the answer has no content")
    data = _extract_json(content)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise AnswerProblem("schema", f"{loc}: {first['msg']} ({err.error_count()} error(s))") from None


def repair_message(problem: AnswerProblem, model: type[BaseModel]) -> str:
    """The follow-up user message that asks the model to answer again, correctly."""
    if problem.kind == "truncated":
        ask = "Your answer was cut off. Answer again, more briefly"
    else:
        ask = f"Your answer could not be used ({problem.kind}: {problem.detail}). Answer again"
    schema = json.dumps(schema_of(model), separators=(",", ":"))
    return f"{ask}, with only a JSON object that matches this JSON schema:\n{schema}"
