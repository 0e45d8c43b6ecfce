"""Typed configs: overrides, clear errors, resolved copies, and every shipped YAML parses."""

import importlib
import re
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from instructengine.config import Config, ConfigError, apply_overrides, config_hash, load_config, save_resolved

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


class Inner(Config):
    lr: float = Field(1e-4, gt=0, description="learning rate")
    schedule: str = Field("constant", pattern="^(constant|cosine)$", description="lr schedule")


class Outer(Config):
    name: str = Field("x", description="name")
    steps: int = Field(10, ge=1, description="steps")
    train: Inner = Field(default_factory=Inner, description="training")


def test_overrides_are_parsed_as_yaml_and_nested():
    out = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=1e-5", "steps=3", "train.schedule=cosine", "name=a=b"])
    assert out == {"train": {"lr": 1e-5, "schedule": "cosine"}, "steps": 3, "name": "a=b"}


def test_load_applies_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\ntrain:\n  lr: 0.1\n")
    cfg = load_config(Outer, p, ["train.lr=2e-5"])
    assert cfg.steps == 5 and cfg.train.lr == pytest.approx(2e-5) and cfg.train.schedule == "constant"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=-1", r"train\.lr = -1: .*greater than 0"),
        ("steps=zero", r"steps = 'zero': .*valid integer"),
        ("train.schedule=linear", r"train\.schedule = 'linear': .*pattern"),
        ("train.lrr=1", r"train\.lrr: unknown field"),
    ],
)
def test_bad_values_name_field_value_and_rule(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Outer, None, [override])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(Outer, None, ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_config(Outer, tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("steps: 5\n")
    with pytest.raises(ConfigError, match="'steps' is a value"):
        load_config(Outer, tmp_path / "ok.yaml", ["steps.x=1"])
    with pytest.raises(ConfigError, match=r"steps = \{'x': 1\}: Input should be a valid integer"):
        load_config(Outer, None, ["steps.x=1"])


def test_resolved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(Outer, None, ["train.lr=3e-5"])
    path = save_resolved(cfg, tmp_path / "config.yaml")
    again = load_config(Outer, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Outer, None, ["train.lr=4e-5"])) != config_hash(cfg)


def _config_class(path: Path):
    header = " ".join(line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#"))
    m = re.search(r"class: ([\w.]+)\)?", header)
    assert m, f"{path.name}: the header comment must name its config class as '(class: module.Class)'"
    module, name = m.group(1).rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_yaml_validates(path):
    assert CONFIGS, "configs/ holds no YAML"
    cls = _config_class(path)
    cfg = load_config(cls, path)
    data = yaml.safe_load(path.read_text())
    # every key written in the file is a field of the class (extra=forbid makes typos fail above)
    assert set(data) <= set(type(cfg).model_fields)
