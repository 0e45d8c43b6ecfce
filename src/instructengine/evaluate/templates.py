"""Prompt templates of the VQA scorer and the VLM judge: ``evaluate/prompts/<name>.jinja``.

A folder given as ``prompts_dir`` (the LLM config's field) is searched first, so one template can
be replaced by dropping a file of the same name there. Rendering is strict: a variable missing
from the call is an error, not an empty string.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).parent / "prompts"


@lru_cache(maxsize=8)
def _env(override_dir: str | None):
    import jinja2

    search = [str(TEMPLATES_DIR)]
    if override_dir is not None:
        if not Path(override_dir).is_dir():
            raise ValueError(f"prompts_dir {override_dir!r} is not a folder of *.jinja templates")
        search.insert(0, override_dir)
    return jinja2.Environment(loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render(name: str, override_dir: str | None = None, **variables: Any) -> str:
    return _env(override_dir).get_template(f"{name}.jinja").render(**variables).strip()
