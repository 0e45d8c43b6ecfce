"""Parsing recorded answers into the text-stage schemas, including malformed ones."""

import json

import pytest

from instructengine.llm.schemas import ConfirmAnswer, EntitiesAnswer, PairsAnswer, ThemesAnswer
from instructengine.llm.structured import AnswerProblem, parse_answer, repair_message, response_format

# answers as real chat models write them
RECORDED_OK = [
    ('{"themes": ["people", "animals"]}', ThemesAnswer, ["people", "animals"]),
    ('```json\n{"themes": ["people", " animals "]}\n```', ThemesAnswer, ["people", "animals"]),
    ('```\n{"themes": ["people"]}\n```', ThemesAnswer, ["people"]),
    ('Sure! Here are the themes:\n{"themes": ["food"]}\nLet me know if you need more.', ThemesAnswer, ["food"]),
    ('{"entities": ["red fox", "barn owl"], "note": "extra keys are fine"}', EntitiesAnswer, ["red fox", "barn owl"]),
]


@pytest.mark.parametrize("text,model,expected", RECORDED_OK)
def test_recorded_valid_answers(text, model, expected):
    answer = parse_answer(text, model)
    assert list(answer.model_dump().values())[0] == expected


def test_pairs_and_confirm():
    pairs = parse_answer('{"pairs": [{"instruction_1": "a red fox", "instruction_2": "a blue fox"}]}', PairsAnswer)
    assert pairs.pairs[0].instruction_2 == "a blue fox"
    assert parse_answer('{"belongs": false, "reason": "abstract"}', ConfirmAnswer).belongs is False


RECORDED_BAD = [
    ("Here are some themes: people, animals, landscapes.", ThemesAnswer, None, "not_json"),
    ('{"themes": ["people", "anim', ThemesAnswer, "length", "truncated"),
    ('{"themes": ["people", "anim', ThemesAnswer, "stop", "not_json"),
    ('{"themes": []}', ThemesAnswer, None, "schema"),
    ('{"themes": "people, animals"}', ThemesAnswer, None, "schema"),
    ('{"themes": ["people", "   "]}', ThemesAnswer, None, "schema"),
    ('{"pairs": [{"instruction_1": "a fox"}]}', PairsAnswer, None, "schema"),
    ('{"belongs": "perhaps"}', ConfirmAnswer, None, "schema"),
    ("", ThemesAnswer, None, "empty"),
    (None, ThemesAnswer, None, "empty"),
]


@pytest.mark.parametrize("text,model,finish,kind", RECORDED_BAD)
def test_recorded_malformed_answers(text, model, finish, kind):
    with pytest.raises(AnswerProblem) as info:
        parse_answer(text, model, finish_reason=finish)
    assert info.value.kind == kind


def test_refusal_is_its_own_kind():
    with pytest.raises(AnswerProblem) as info:
        parse_answer(None, ThemesAnswer, refusal="I can't help with that.")
    assert info.value.kind == "refusal"


def test_response_format_states_the_schema():
    fmt = response_format(ThemesAnswer, "json_schema")
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "themes"
    assert fmt["json_schema"]["schema"]["required"] == ["themes"]
    assert response_format(ThemesAnswer, "json_object") == {"type": "json_object"}
    assert response_format(ThemesAnswer, "none") is None


def test_repair_message_names_the_problem_and_the_schema():
    msg = repair_message(AnswerProblem("schema", "themes: List should have at least 1 item"), ThemesAnswer)
    assert "schema: themes" in msg
    schema = json.loads(msg.split("\n", 1)[1])
    assert schema["properties"]["themes"]["type"] == "array"
    assert "cut off" in repair_message(AnswerProblem("truncated", ""), ThemesAnswer)


# --- OpenAI strict mode -------------------------------------------------------------------
def strict_violations(schema, root=None, path="$"):
    """OpenAI's strict-mode rules for response_format json_schema (Structured Outputs docs), checked
    independently of the SDK helper that builds the schema: every object node has
    additionalProperties false and lists every property as required; a $ref stands alone; the
    root is an object; the rules hold in properties, items, anyOf, allOf and $defs alike."""
    root = schema if root is None else root
    out = []
    if path == "$" and schema.get("type") != "object":
        out.append(f"{path}: the root must be an object")
    if "$ref" in schema and len(schema) > 1:
        out.append(f"{path}: $ref with sibling keys {sorted(set(schema) - {'$ref'})}")
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            out.append(f"{path}: additionalProperties must be false")
        props = schema.get("properties", {})
        if sorted(schema.get("required", [])) != sorted(props):
            out.append(f"{path}: required {schema.get('required')} must list every property {sorted(props)}")
        for k, v in props.items():
            out += strict_violations(v, root, f"{path}.{k}")
    if isinstance(schema.get("items"), dict):
        out += strict_violations(schema["items"], root, f"{path}[]")
    for key in ("anyOf", "allOf"):
        for i, v in enumerate(schema.get(key, [])):
            out += strict_violations(v, root, f"{path}.{key}[{i}]")
    for name, v in schema.get("$defs", {}).items():
        out += strict_violations(v, root, f"{path}.$defs.{name}")
    return out


def _all_answer_models():
    from instructengine.images.judge import JudgeAnswer
    from instructengine.llm.schemas import SubtopicsAnswer

    return [ThemesAnswer, SubtopicsAnswer, EntitiesAnswer, ConfirmAnswer, PairsAnswer, JudgeAnswer]


def test_the_rule_checker_catches_what_strict_mode_refuses():
    # the checker itself: the plain pydantic schemas break the rules (optional fields, open objects)
    assert strict_violations(ConfirmAnswer.model_json_schema())
    assert any("additionalProperties" in v for v in strict_violations(PairsAnswer.model_json_schema()))


@pytest.mark.parametrize("model", _all_answer_models(), ids=lambda m: m.__name__)
def test_strict_schema_follows_openai_strict_rules(model):
    fmt = response_format(model, "json_schema", strict=True)
    assert fmt["json_schema"]["strict"] is True
    assert strict_violations(fmt["json_schema"]["schema"]) == []
    # non-strict requests keep the plain schema (so existing caches stay valid)
    assert response_format(model, "json_schema", strict=False)["json_schema"]["schema"] == model.model_json_schema()


def test_strict_answers_still_validate():
    # strict mode makes the model always write `reason`; such an answer is valid for the model
    assert parse_answer('{"belongs": true, "reason": ""}', ConfirmAnswer).belongs is True
