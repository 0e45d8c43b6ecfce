"""Read evaluation folders (the evaluation harness's output) and check they can be compared.

Layout read (written by ``instructengine.evaluate``)::

    eval/<model_name>/<benchmark>/
      generation.json     model + generation settings (optional here; kept with the study)
      prompts.parquet     prompt_index, prompt, category
      images.parquet      prompt_index, seed, path (relative to the benchmark folder), nsfw_flagged (optional)
      images/<prompt_index>_<seed>.png

A study needs every run to hold the same prompts (same index -> same text) and the same
(prompt_index, seed) images; anything else is refused with :class:`StudyInputError` naming the
run and the differing items. Image paths must stay inside their benchmark folder and exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from instructengine.errors import UsageError

__all__ = ["EvalRun", "StudyInputError", "check_shared", "read_eval_run"]

_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class StudyInputError(UsageError, ValueError):
    """The evaluation folders cannot form a study; the message says which folder and what differs."""


@dataclass
class EvalRun:
    """One system's evaluation folder, read and checked."""

    name: str
    path: Path
    generation: dict
    prompts: dict[int, tuple[str, str]]  # prompt_index -> (prompt, category)
    images: dict[tuple[int, int], Path] = field(default_factory=dict)  # (prompt_index, seed) -> absolute path
    nsfw_flagged: set[tuple[int, int]] = field(default_factory=set)  # the generator's safety checker fired

    @property
    def keys(self) -> set[tuple[int, int]]:
        return set(self.images)


def _examples(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(str(k) for k in keys[:n]) + more


def read_eval_run(path: str | Path, name: str | None = None) -> EvalRun:
    """Read one ``eval/<model_name>/<benchmark>`` folder.

    Raises:
        StudyInputError: missing folder or files, missing columns, duplicate rows, image paths
            leaving the folder or pointing at missing files, or an unknown image type.
    """
    import pandas as pd

    root = Path(path)
    if not root.is_dir():
        raise StudyInputError(f"evaluation folder {str(root)!r} does not exist (expected eval/<model_name>/<benchmark>)")
    root = root.resolve()
    name = name or root.parent.name
    for fname in ("prompts.parquet", "images.parquet"):
        if not (root / fname).is_file():
            raise StudyInputError(f"{str(root)!r} has no {fname}; is it an evaluation folder eval/<model_name>/<benchmark>?")
    generation: dict = {}
    if (root / "generation.json").is_file():
        try:
            generation = json.loads((root / "generation.json").read_text())
        except json.JSONDecodeError as err:
            raise StudyInputError(f"{str(root / 'generation.json')!r} is not valid JSON: {err}") from None

    prompts_df = pd.read_parquet(root / "prompts.parquet")
    missing = {"prompt_index", "prompt"} - set(prompts_df.columns)
    if missing:
        raise StudyInputError(
            f"{str(root / 'prompts.parquet')!r} lacks columns {sorted(missing)}; expected prompt_index, prompt, category"
        )
    dup = prompts_df["prompt_index"][prompts_df["prompt_index"].duplicated()]
    if len(dup):
        raise StudyInputError(f"{str(root / 'prompts.parquet')!r} repeats prompt_index {_examples(set(dup.tolist()))}")
    has_cat = "category" in prompts_df.columns
    prompts = {
        int(r.prompt_index): (str(r.prompt), str(r.category) if has_cat and r.category is not None else "")
        for r in prompts_df.itertuples(index=False)
    }

    images_df = pd.read_parquet(root / "images.parquet")
    missing = {"prompt_index", "seed", "path"} - set(images_df.columns)
    if missing:
        raise StudyInputError(
            f"{str(root / 'images.parquet')!r} lacks columns {sorted(missing)}; expected prompt_index, seed, path"
        )
    images: dict[tuple[int, int], Path] = {}
    nsfw: set[tuple[int, int]] = set()
    problems: dict[str, list] = {"duplicate (prompt_index, seed)": [], "unknown prompt_index": [],
                                 "path leaves the folder": [], "file missing": [], "not an image type": []}
    for r in images_df.itertuples(index=False):
        key = (int(r.prompt_index), int(r.seed))
        rel = str(r.path)
        full = (root / rel).resolve()
        if key in images:
            problems["duplicate (prompt_index, seed)"].append(key)
        elif key[0] not in prompts:
            problems["unknown prompt_index"].append(key)
        elif Path(rel).is_absolute() or not full.is_relative_to(root):
            problems["path leaves the folder"].append(rel)
        elif not full.is_file():
            problems["file missing"].append(rel)
        elif full.suffix.lower() not in _IMAGE_TYPES:
            problems["not an image type"].append(rel)
        else:
            images[key] = full
            flagged = getattr(r, "nsfw_flagged", None)
            if flagged is not None and not pd.isna(flagged) and bool(flagged):
                nsfw.add(key)
    bad = {k: v for k, v in problems.items() if v}
    if bad:
        detail = "; ".join(f"{reason}: {len(v)} ({_examples(v, 3)})" for reason, v in bad.items())
        raise StudyInputError(f"{str(root / 'images.parquet')!r} has unusable rows: {detail}")
    if not images:
        raise StudyInputError(f"{str(root / 'images.parquet')!r} lists no images")
    return EvalRun(name=name, path=root, generation=generation, prompts=prompts, images=images, nsfw_flagged=nsfw)


def media_type(path: Path) -> str:
    return _IMAGE_TYPES[path.suffix.lower()]


def check_shared(runs: list[EvalRun], seeds: list[int] | None = None) -> list[tuple[int, int]]:
    """The (prompt_index, seed) keys every run holds, after checking that the runs agree.

    Raises:
        StudyInputError: fewer than two runs, duplicate names, a prompt text that differs between
            runs, image sets that differ, or a requested seed that some run lacks.
    """
    if len(runs) < 2:
        raise StudyInputError(f"a study compares two or more evaluation runs; got {len(runs)}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise StudyInputError(
            f"system names {names} repeat (runs of the same <model_name>?); give distinct names with study.names"
        )
    wanted = None if seeds is None else set(seeds)
    if wanted is not None:
        for run in runs:
            lacking = sorted(wanted - {s for _, s in run.keys})
            if lacking:
                raise StudyInputError(
                    f"seeds {lacking} are not in run {run.name!r} ({run.path}); it holds seeds {sorted({s for _, s in run.keys})}"
                )

    def keys_of(run: EvalRun) -> set[tuple[int, int]]:
        return run.keys if wanted is None else {k for k in run.keys if k[1] in wanted}

    ref = runs[0]
    for run in runs[1:]:
        only_ref = keys_of(ref) - keys_of(run)
        only_run = keys_of(run) - keys_of(ref)
        if only_ref or only_run:
            parts = []
            if only_ref:
                parts.append(f"{len(only_ref)} (prompt_index, seed) only in {ref.name!r}: {_examples(only_ref)}")
            if only_run:
                parts.append(f"{len(only_run)} only in {run.name!r}: {_examples(only_run)}")
            raise StudyInputError(
                f"runs {ref.name!r} ({ref.path}) and {run.name!r} ({run.path}) do not share prompts and seeds: "
                + "; ".join(parts) + ". Evaluate both on the same benchmark with the same seeds, or pick shared seeds with study.seeds."
            )
        differ = sorted({i for i, _ in keys_of(ref) if ref.prompts[i][0] != run.prompts.get(i, (None,))[0]})
        if differ:
            i = differ[0]
            raise StudyInputError(
                f"runs {ref.name!r} and {run.name!r} give different prompt texts for {len(differ)} prompt_index "
                f"values, e.g. {i}: {ref.prompts[i][0]!r} vs {run.prompts.get(i, ('<missing>',))[0]!r}"
            )
    keys = sorted(keys_of(ref))
    return keys
