"""Prompt templates as files: ``llm/prompts/<name>.jinja``, optionally overridden per project.

A folder given as ``prompts_dir`` is searched first, so a user can change one prompt by dropping a
file of the same name there. Rendering is strict: a variable missing from the call is an error,
not an empty string.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["PACKAGED_PROMPTS", "PromptLibrary"]

PACKAGED_PROMPTS = Path(__file__).with_name("prompts")


class PromptLibrary:
    def __init__(self, override_dir: str | Path | None = None):
        import jinja2

        searchpath = [str(PACKAGED_PROMPTS)]
        if override_dir is not None:
            override = Path(override_dir)
            if not override.is_dir():
                raise ValueError(f"prompts_dir {str(override)!r} is not a folder of *.jinja templates")
            searchpath.insert(0, str(override))
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(searchpath),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def render(self, name: str, **variables: Any) -> str:
        return self._env.get_template(f"{name}.jinja").render(**variables).strip()

    def source(self, name: str) -> str:
        loader = self._env.loader
        assert loader is not None
        return loader.get_source(self._env, f"{name}.jinja")[0]

    def digest(self, names: list[str]) -> str:
        """A short hash of the named templates' text (changes when a prompt changes)."""
        h = hashlib.sha256()
        for name in names:
            h.update(name.encode())
            h.update(self.source(name).encode())
        return h.hexdigest()[:12]
