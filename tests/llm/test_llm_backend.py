"""Prompt templates and the LLM instruction backend against the local server."""

import asyncio
import sys
from pathlib import Path

import jinja2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from text_responder import TextStageResponder, fields  # noqa: E402

from instructengine.backends import InstructionBackend  # noqa: E402
from instructengine.llm import build_client  # noqa: E402
from instructengine.llm.backend import LLMInstructionBackend  # noqa: E402
from instructengine.llm.config import LLMConfig  # noqa: E402
from instructengine.llm.prompts import PACKAGED_PROMPTS, PromptLibrary  # noqa: E402


def test_every_prompt_renders_and_states_its_inputs():
    lib = PromptLibrary()
    text = lib.render("contrast_pairs", theme="animals", subtopic="farm animals", entity="goat", dimension="counterfactual", n=2)
    assert text.startswith("Primary theme: animals\nSubtopic: farm animals\nEntity: goat\nDimension: counterfactual\nNumber: 2")
    assert "imaginary" in text and '"instruction_1"' in text
    assert "Axis: style" in lib.render("subtopics", theme="art", axis="style", n=5)
    assert "artistic, photographic" in lib.render("subtopics", theme="art", axis="style", n=5)
    assert {p.stem for p in PACKAGED_PROMPTS.glob("*.jinja")} == {
        "system", "themes", "subtopics", "entities", "confirm_entity", "contrast_pairs"
    }


def test_missing_template_variable_is_an_error():
    with pytest.raises(jinja2.UndefinedError, match="entity"):
        PromptLibrary().render("confirm_entity", theme="a", subtopic="b")


def test_prompt_override_dir(tmp_path):
    (tmp_path / "entities.jinja").write_text("Subtopic: {{ subtopic }}\nList {{ n }} things.")
    lib = PromptLibrary(tmp_path)
    assert lib.render("entities", theme="t", subtopic="s", n=3) == "Subtopic: s\nList 3 things."
    assert lib.digest(["entities"]) != PromptLibrary().digest(["entities"])
    with pytest.raises(ValueError, match="not a folder"):
        PromptLibrary(tmp_path / "nope")


def test_llm_backend_methods(start_server, tmp_path):
    srv = start_server(TextStageResponder())
    cfg = LLMConfig(base_url=srv.base_url, model="m", api_key_env="IE_TEST_KEY_UNSET", cache_path=str(tmp_path / "c.sqlite"), seed=10)

    async def go():
        async with build_client(cfg) as client:
            backend = LLMInstructionBackend(client)
            assert isinstance(backend, InstructionBackend)
            themes = await backend.propose_themes(["people", "animals"], 3, sample=1)
            subs = await backend.propose_subtopics("animals", "style", 2, sample=0)
            ents = await backend.propose_entities("animals", "watercolor animals", 4)
            yes = await backend.confirm_entity("animals", "watercolor animals", "watercolor animals mural")
            no = await backend.confirm_entity("animals", "watercolor animals", "watercolor animals impostor")
            pairs = await backend.contrast_pairs("animals", "watercolor animals", "goat", "content", 2)
            return themes, subs, ents, yes, no, pairs, backend.fingerprint

    themes, subs, ents, yes, no, pairs, fp = asyncio.run(go())
    assert len(themes) == 3 and themes[1] == "PEOPLE"
    # seed = llm.seed (10) + sample: the scripted server picks its words by seed (10 % 6 -> "low poly")
    assert subs == ["low poly animals", "low poly animalss"]
    assert len(ents) == 4 and ents[2] == "quartz xylophone zebra"
    assert (yes, no) == (True, False)
    assert pairs == [
        ("a photo of one red goat on a wooden table", "a photo of three blue goat on a wooden table"),
        ("a photo of one red goat on a wooden table variant 1", "a photo of three blue goat on a wooden table variant 1"),
    ]
    assert fp.startswith("llm:m:")
    assert [e["schema"] for e in srv.log] == [
        "themes", "subtopics", "entities", "confirm_entity", "confirm_entity", "contrast_pairs"
    ]


def test_responder_reads_the_template_header():
    # the scripted server depends on the templates' "Key: value" header; keep them in step
    body = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": PromptLibrary().render("entities", theme="a", subtopic="b", n=4)}]}
    assert fields(body) == {"primary theme": "a", "subtopic": "b", "number": "4"}
