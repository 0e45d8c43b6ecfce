"""Prompt sets: DrawBench (shipped), loaders for user files, and a registry for named sets.

A :class:`PromptSet` is an ordered list of prompts, each with a category. The position of a prompt
in the set is its ``prompt_index`` everywhere downstream (image file names, tables), so two models
evaluated on the same set and seeds are compared item by item.

File formats (``format: auto`` picks by extension; a folder is read as HPDv2-style):

=========  =====================================================================================
txt        one prompt per line; blank lines skipped; category "all"
csv        header row; prompt column ``prompt`` (or ``prompt_column``), optional ``category``
tsv/parti  PartiPrompts ``PartiPrompts.tsv``: columns ``Prompt``, ``Category``, ``Challenge``
json       a list of strings; a list of objects with ``prompt`` (or ``caption``/``text``) and
           optional ``category``; or an object ``{category: [prompts]}``
jsonl      one object per line, keys as for json
hpdv2      a folder of ``<style>.json`` files (HPSv2 benchmark prompts: anime, concept-art,
           paintings, photo), each a list of strings; the file stem is the category
=========  =====================================================================================

Named sets: ``drawbench`` (200 prompts, 11 categories, ``prompts/drawbench.csv``). Other packages
add theirs with :func:`register_benchmark` (bundles register theirs); a loader
returns a :class:`PromptSet` or a DataFrame with ``prompt`` and ``category`` columns.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from instructengine.config import Config

__all__ = [
    "BenchmarkSpec",
    "PromptSet",
    "available_benchmarks",
    "load_benchmark",
    "load_prompt_file",
    "register_benchmark",
]

PROMPTS_DIR = Path(__file__).parent / "prompts"
DEFAULT_CATEGORY = "all"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

FileFormat = Literal["auto", "txt", "csv", "tsv", "parti", "json", "jsonl", "hpdv2"]


@dataclass
class PromptSet:
    """An ordered prompt list with one category per prompt.

    ``ids`` are the prompts' positions in the *full* set (before a category filter or a limit);
    they are the ``prompt_index`` of every table and image name, so a subset run and a full run
    name the same prompt the same way.
    """

    name: str
    prompts: list[str]
    categories: list[str] = field(default_factory=list)
    source: str = ""
    ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.categories:
            self.categories = [DEFAULT_CATEGORY] * len(self.prompts)
        if not self.ids:
            self.ids = list(range(len(self.prompts)))
        if len(self.categories) != len(self.prompts) or len(self.ids) != len(self.prompts):
            raise ValueError(
                f"prompt set {self.name!r}: {len(self.prompts)} prompts but {len(self.categories)} categories "
                f"and {len(self.ids)} ids"
            )
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"prompt set {self.name!r}: duplicate prompt ids")
        for i, p in enumerate(self.prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt set {self.name!r}: prompt {i} is empty or not a string ({p!r})")
        self.categories = [str(c) if c is not None and str(c).strip() else DEFAULT_CATEGORY for c in self.categories]

    def __len__(self) -> int:
        return len(self.prompts)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt_index": self.ids, "prompt": self.prompts, "category": self.categories})


class BenchmarkSpec(Config):
    """Which prompts to evaluate on."""

    name: str = Field("drawbench", description="benchmark name: a registered set (drawbench, or one a bundle registers) or the label of `path`; also the folder name under eval/<model>/")
    path: str | None = Field(None, description="prompt file or folder to load instead of a registered set")
    format: FileFormat = Field("auto", description="file format of `path` (auto: by extension; folder: hpdv2)")
    prompt_column: str | None = Field(None, description="CSV/TSV/JSON key holding the prompt (default: prompt / Prompt / caption / text)")
    category_column: str | None = Field(None, description="CSV/TSV/JSON key holding the category (default: category / Category)")
    categories: list[str] | None = Field(None, description="keep only these categories")
    limit: int | None = Field(None, ge=1, description="keep the first N prompts (after the category filter); for quick runs")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be a folder-safe name: letters, digits, '.', '_', '-' (e.g. drawbench)")
        return v


# --------------------------------------------------------------------------------------------- registry

BenchmarkLoader = Callable[[], Any]
def load_drawbench() -> "PromptSet":
    """DrawBench's 200 prompts in 11 categories (shipped with the package)."""
    return load_prompt_file(PROMPTS_DIR / "drawbench.csv", name="drawbench")


def register_benchmark(name: str, loader: BenchmarkLoader | str) -> None:
    """Register a named prompt set (kind ``benchmark`` of :mod:`instructengine.registry`); ``loader()``
    returns a PromptSet or a prompt/category DataFrame, or is an import path ``"package.module:function"``.
    """
    from instructengine import registry

    if not _NAME_RE.match(name):
        raise ValueError(f"benchmark name {name!r} must be folder-safe (letters, digits, '.', '_', '-')")
    registry.register("benchmark", name, loader)


def available_benchmarks() -> list[str]:
    from instructengine import registry

    return registry.available("benchmark")


def _as_prompt_set(obj: Any, name: str, source: str) -> PromptSet:
    if isinstance(obj, PromptSet):
        return PromptSet(name, list(obj.prompts), list(obj.categories), obj.source or source, list(obj.ids))
    if hasattr(obj, "columns") and "prompt" in obj.columns:
        cats = list(obj["category"]) if "category" in obj.columns else []
        return PromptSet(name, [str(p) for p in obj["prompt"]], cats, source)
    raise ValueError(f"benchmark loader for {name!r} returned {type(obj).__name__}; expected a PromptSet or a DataFrame with a 'prompt' column")


def load_benchmark(spec: BenchmarkSpec) -> PromptSet:
    """Load the prompt set a spec names, then apply its category filter and limit.

    Raises:
        ValueError: unknown name (lists known ones), unreadable file, or a filter that keeps nothing.
    """
    if spec.path is not None:
        ps = load_prompt_file(spec.path, spec.format, spec.name, spec.prompt_column, spec.category_column)
    else:
        from instructengine import registry

        try:
            loader = registry.resolve("benchmark", spec.name, where="benchmark.name")
        except ValueError as err:
            raise ValueError(f"{err}; or give `path` to a prompt file") from None
        ps = _as_prompt_set(loader(), spec.name, f"registered:{spec.name}")
    keep = list(range(len(ps)))
    if spec.categories is not None:
        unknown = sorted(set(spec.categories) - set(ps.categories))
        if unknown:
            raise ValueError(f"benchmark {spec.name!r} has no categories {unknown}; it has {sorted(set(ps.categories))}")
        keep = [i for i in keep if ps.categories[i] in spec.categories]
    if spec.limit is not None:
        keep = keep[: spec.limit]
    return PromptSet(ps.name, [ps.prompts[i] for i in keep], [ps.categories[i] for i in keep], ps.source,
                     [ps.ids[i] for i in keep])


# --------------------------------------------------------------------------------------------- files

_PROMPT_KEYS = ("prompt", "Prompt", "caption", "text")
_CATEGORY_KEYS = ("category", "Category")


def _pick(keys: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, source: str, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in keys:
            raise ValueError(f"{source}: no {what} column {wanted!r}; columns are {keys}")
        return wanted
    for k in defaults:
        if k in keys:
            return k
    if required:
        raise ValueError(f"{source}: no {what} column; expected one of {list(defaults)} (or set {what}_column), got {keys}")
    return None


def _from_records(records: list[Any], name: str, source: str, prompt_col: str | None, cat_col: str | None) -> PromptSet:
    if all(isinstance(r, str) for r in records):
        return PromptSet(name, list(records), [], source)
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{source}: expected a list of strings or of objects with a prompt key")
    keys = sorted({k for r in records for k in r})
    pk = _pick(keys, prompt_col, _PROMPT_KEYS, "prompt", source, True)
    ck = _pick(keys, cat_col, _CATEGORY_KEYS, "category", source, False)
    missing = [i for i, r in enumerate(records) if pk not in r]
    if missing:
        raise ValueError(f"{source}: records {missing[:5]} have no {pk!r}")
    return PromptSet(name, [r[pk] for r in records], [r.get(ck) for r in records] if ck else [], source)


def _read_delimited(text: str, delimiter: str, name: str, source: str, prompt_col: str | None, cat_col: str | None) -> PromptSet:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    keys = list(reader.fieldnames or [])
    pk = _pick(keys, prompt_col, _PROMPT_KEYS, "prompt", source, True)
    ck = _pick(keys, cat_col, _CATEGORY_KEYS, "category", source, False)
    return PromptSet(name, [r[pk] for r in rows], [r[ck] for r in rows] if ck else [], source)


def load_prompt_file(
    path: str | Path,
    format: FileFormat = "auto",
    name: str | None = None,
    prompt_column: str | None = None,
    category_column: str | None = None,
) -> PromptSet:
    """Read a prompt file (or an HPDv2-style folder) in one of the formats of the module table.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown format or extension, malformed content, a missing prompt column.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    name = name or p.stem
    source = str(p)
    fmt = format
    if fmt == "auto":
        if p.is_dir():
            fmt = "hpdv2"
        else:
            fmt = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}.get(p.suffix.lower(), "")
            if not fmt:
                raise ValueError(f"{source}: cannot tell the format from the extension {p.suffix!r}; set format to one of txt, csv, tsv, parti, json, jsonl, hpdv2")
    if fmt == "hpdv2":
        if not p.is_dir():
            raise ValueError(f"{source}: format hpdv2 expects a folder of <style>.json files")
        prompts, cats = [], []
        files = sorted(p.glob("*.json"))
        if not files:
            raise ValueError(f"{source}: no .json files in the folder")
        for f in files:
            data = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
                raise ValueError(f"{f}: an HPDv2 style file must be a JSON list of prompt strings")
            prompts += data
            cats += [f.stem] * len(data)
        return PromptSet(name, prompts, cats, source)
    text = p.read_text(encoding="utf-8-sig")
    if fmt == "txt":
        return PromptSet(name, [line.strip() for line in text.splitlines() if line.strip()], [], source)
    if fmt == "csv":
        return _read_delimited(text, ",", name, source, prompt_column, category_column)
    if fmt in ("tsv", "parti"):
        return _read_delimited(text, "\t", name, source, prompt_column, category_column)
    if fmt == "jsonl":
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}: line {i + 1} is not JSON: {err}") from None
        return _from_records(records, name, source, prompt_column, category_column)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
        if isinstance(data, dict):
            if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()):
                raise ValueError(f"{source}: a JSON object must map category -> list of prompt strings")
            return PromptSet(name, [x for v in data.values() for x in v], [k for k, v in data.items() for _ in v], source)
        if isinstance(data, list):
            return _from_records(data, name, source, prompt_column, category_column)
        raise ValueError(f"{source}: JSON must be a list or an object, got {type(data).__name__}")
    raise ValueError(f"{source}: unknown format {fmt!r}; use one of txt, csv, tsv, parti, json, jsonl, hpdv2")
