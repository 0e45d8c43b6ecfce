"""The text-pipeline config: the shipped YAML parses, every field is documented, errors are named."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from instructengine.config import ConfigError, load_config
from instructengine.text_pipeline import TextPipelineConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_data_llm_yaml_is_paper_scale():
    cfg = load_config(TextPipelineConfig, CONFIGS / "data_llm.yaml")
    assert cfg.backend.kind == "llm" and cfg.llm.api_key_env == "OPENAI_API_KEY"
    assert cfg.taxonomy.n_themes * cfg.taxonomy.subtopics_per_theme == 800
    assert len(cfg.taxonomy.seeds) == 6 and len(cfg.taxonomy.axes) == 5
    assert "api_key" not in cfg.llm.model_dump()  # only the variable's name is configurable


def test_pair_dimensions_match_the_sample_schema():
    from instructengine.data.schema import DIMENSIONS
    from instructengine.instructions.config import DIMENSION_NAMES

    assert DIMENSION_NAMES == DIMENSIONS


def _models(model: type[BaseModel]):
    yield model
    for f in model.model_fields.values():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _models(ann)


def test_every_field_has_a_description():
    from instructengine.llm.config import Price

    for model in [*_models(TextPipelineConfig), Price]:
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("pairs.dimensions=[content,colour]", "pairs.dimensions"),
        ("pairs.dimensions_per_entity=4", "exceeds the 3 dimensions"),
        ("taxonomy.axes=[style,style]", "unique"),
        ("entities.subtopic_text='a {topic}'", "may only use"),
        ("llm.structured_output=xml", "llm.structured_output"),
        ("llm.api_key=sk-123", "unknown field"),
    ],
)
def test_bad_values_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(TextPipelineConfig, CONFIGS / "data_llm.yaml", [override])
