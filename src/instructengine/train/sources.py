"""Readers of the paper's training data in their published formats, and seeded (nested) subsets.

* **Pick-a-Pic v2** (the paper's Diffusion-DPO baseline: 851,293 pairs, 58,960 prompts): parquet
  shards with ``caption``, ``jpg_0`` / ``jpg_1`` (encoded image bytes) and ``label_0`` / ``label_1``.
  ``label_0 = 1`` means image 0 was preferred, ``label_0 = 0`` image 1; ties (``0.5 / 0.5``) are
  dropped, as the Diffusion-DPO code keeps only rows with ``label_0`` in (0, 1). A row gives the
  triple (caption; winner, loser), the pair (caption, winner) or the caption alone, by layout.
  The bytes of the images used are written once, unchanged, to one file each (``image_cache``), so
  that training (and its latent cache) reads files like every other source; a later run finds them.
* **Prompt lists** (ReFL's prompts, and the candidates stage's input for the reward best/worst
  baseline): DiffusionDB's ``metadata.parquet`` (column ``prompt``; the paper's ReFL samples 50,000
  of them), Pick-a-Pic's captions (column ``caption`` of the same shards; only that column is read),
  or any parquet / csv / jsonl table or text file (one prompt a line).
* **Subsets**: :func:`nested_subset` orders items so that every prefix is a seeded random subset,
  stratified over groups (theme x dimension for preference samples): ``subset(n1) c subset(n2)``
  for ``n1 < n2``. ``data.max_items`` uses it; the data-efficiency study uses it on samples.

Readers count what they drop by reason; nothing is dropped silently.
"""

from __future__ import annotations

import glob as _glob
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np

__all__ = [
    "SourceRead",
    "image_suffix",
    "nested_subset",
    "nested_subset_frame",
    "prompt_instructions",
    "prompt_list",
    "prompt_list_instructions",
    "read_pickapic",
    "read_prompt_list",
    "resolve_files",
    "subset_order",
]

#: separator of a lazy Pick-a-Pic image reference "<shard>::<row>::<column>" (resolved to a file path)
_REF = "::"


@dataclass
class SourceRead:
    """What a reader returns: items, one stratum key per item, rows read, and an optional step that
    turns the items kept after subsetting into loadable ones (e.g. writes their image files)."""

    items: list[Any]
    strata: list[Hashable] | None
    rows: int
    materialise: Callable[[list[Any], Counter], list[Any]] | None = None


def resolve_files(root: str | Path, patterns: Sequence[str], what: str) -> list[Path]:
    """Files matching the glob ``patterns`` (relative to ``root`` unless absolute), sorted, distinct.

    Raises:
        FileNotFoundError: no file matches any pattern.
    """
    root = Path(root)
    found: dict[str, Path] = {}
    for pat in patterns:
        full = pat if Path(pat).is_absolute() else str(root / pat)
        for hit in sorted(_glob.glob(full, recursive=True)):
            p = Path(hit)
            if p.is_file():
                found.setdefault(str(p.resolve()), p)
    if not found:
        raise FileNotFoundError(f"{what}: no file matches {list(patterns)} under {str(root)!r}")
    return [found[k] for k in sorted(found)]


# ----------------------------------------------------------------------------------------------
# nested, stratified random subsets
# ----------------------------------------------------------------------------------------------


def nested_subset(strata: Sequence[Hashable] | int, n: int | None = None, seed: int = 0) -> list[int]:
    """Indices of a seeded random subset of ``n`` items (all items, in subset order, if ``n`` is None).

    ``strata`` is one group key per item (or the number of items, for one group). Items are put in
    one fixed order and the subset of ``n`` is its first ``n``: so ``nested_subset(s, n1, seed)`` is a
    subset of ``nested_subset(s, n2, seed)`` for ``n1 < n2``. Within a group the order is a seeded
    permutation; groups are interleaved by systematic sampling (the ``r``-th item of a group of ``m``
    comes at ``(r + u) / m`` with one random start ``u`` in [0, 1) shared by all groups, ties broken at
    random),
    so every prefix holds each group in proportion to its size to within about one item, and the
    expected share is exactly proportional (a group too small for one item in expectation is still
    drawn with that probability). The returned indices are sorted ascending.

    Raises:
        ValueError: ``n`` < 0.
    """
    keys = [0] * strata if isinstance(strata, int) else list(strata)
    N = len(keys)
    if n is not None and n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    order = subset_order(keys, seed)
    take = order if n is None else order[: min(n, N)]
    return sorted(take)


def subset_order(strata: Sequence[Hashable], seed: int = 0) -> list[int]:
    """The fixed order behind :func:`nested_subset`: every prefix is a stratified random subset."""
    N = len(strata)
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    # group keys may be of mixed types (None, tuples): order them by their repr for determinism
    names = sorted(groups, key=repr)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EB5E7])
    pos = np.empty(N, dtype=np.float64)
    jitter = rng.random(N)
    start = rng.random()  # one random start for every group: systematic sampling
    for name in names:
        members = np.asarray(groups[name])
        perm = members[rng.permutation(len(members))]
        m = len(members)
        pos[perm] = (np.arange(m) + start) / m
    return [int(i) for i in np.lexsort((jitter, pos))]


def nested_subset_frame(df: Any, n: int | None, seed: int = 0,
                        strata_columns: Sequence[str] = ("theme", "dimension")) -> Any:
    """Rows of a DataFrame (e.g. samples.parquet) in a nested stratified subset of ``n`` (see :func:`nested_subset`).

    Columns of ``strata_columns`` that the frame lacks are ignored (no column: one group).
    """
    cols = [c for c in strata_columns if c in df.columns]
    keys = list(df[cols].itertuples(index=False, name=None)) if cols else [()] * len(df)
    return df.iloc[nested_subset(keys, n, seed)]


# ----------------------------------------------------------------------------------------------
# Pick-a-Pic v2
# ----------------------------------------------------------------------------------------------


def image_suffix(data: bytes) -> str | None:
    """File suffix of encoded image bytes from their magic number (JPEG, PNG, WebP, GIF, BMP), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    return None


def _check_columns(path: Path, schema_names: list[str], need: list[str], setting: str) -> None:
    missing = [c for c in need if c not in schema_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; present: {schema_names} (see {setting})")


def _pickapic_choice(l0: Any, l1: Any) -> tuple[int | None, str | None]:
    """(index of the preferred image, None) or (None, drop reason) for one row's labels."""
    try:
        a, b = float(l0), float(l1)
    except (TypeError, ValueError):
        return None, "label not a number"
    if not (np.isfinite(a) and np.isfinite(b)):
        return None, "label not a number"
    if a == 0.5 and b == 0.5:
        return None, "tie (label_0 = label_1 = 0.5)"
    if a not in (0.0, 1.0):
        return None, "label_0 not 0, 0.5 or 1"
    if b != 1.0 - a:
        return None, "labels inconsistent (label_1 != 1 - label_0)"
    return (0 if a == 1.0 else 1), None


def read_pickapic(data_cfg: Any, layout: str, counts: Counter) -> SourceRead:
    """Pick-a-Pic v2 shards -> items of ``layout`` ('pair': (caption; winner, loser), 'single':
    (caption, winner), 'prompt': distinct captions). Image bytes are read only in ``materialise``.

    Raises:
        FileNotFoundError: no shard matches ``data.pickapic.files``.
        ValueError: a shard lacks a column, or the layout is 'quad' (Pick-a-Pic has no cross-validation
            samples).
    """
    import pyarrow.parquet as pq

    from instructengine.train.data import Item

    pcfg = data_cfg.pickapic
    if layout not in ("pair", "single", "prompt"):
        raise ValueError(f"data.source 'pickapic' gives triples, winners or captions; layout {layout!r} (of this "
                         "method) needs two-instruction samples: use method diffusion_dpo, sft or refl")
    shards = resolve_files(data_cfg.path, pcfg.files, "data.pickapic.files")
    cap, (c0, c1), (l0, l1) = pcfg.caption_column, pcfg.image_columns, pcfg.label_columns
    items: list[Item] = []
    rows = 0
    seen: set[str] = set()
    for shard in shards:
        pf = pq.ParquetFile(shard)
        names = pf.schema_arrow.names
        need = [cap] if layout == "prompt" else [cap, c0, c1, l0, l1]
        _check_columns(shard, names, need, "data.pickapic")
        read_cols = [cap] if layout == "prompt" else [cap, l0, l1]
        row = 0
        for batch in pf.iter_batches(batch_size=pcfg.batch_rows, columns=read_cols):
            cols = batch.to_pydict()
            for i, caption in enumerate(cols[cap]):
                r = row + i
                if not isinstance(caption, str):
                    counts["caption not text"] += 1
                    continue
                if layout == "prompt":
                    if caption in seen:
                        counts["repeated caption"] += 1
                        continue
                    seen.add(caption)
                    items.append(Item((caption,), ()))
                    continue
                win, reason = _pickapic_choice(cols[l0][i], cols[l1][i])
                if reason is not None:
                    counts[reason] += 1
                    continue
                w, lo = (c0, c1) if win == 0 else (c1, c0)
                ref_w, ref_l = f"{shard}{_REF}{r}{_REF}{w}", f"{shard}{_REF}{r}{_REF}{lo}"
                items.append(Item((caption,), (ref_w, ref_l) if layout == "pair" else (ref_w,)))
            row += batch.num_rows
        rows += row
    if layout == "prompt":
        return SourceRead(items, None, rows)
    cache = Path(pcfg.image_cache) if pcfg.image_cache else Path(data_cfg.path) / "_pickapic_images"
    root = Path(data_cfg.path)
    return SourceRead(items, None, rows, lambda kept, c: _materialise_pickapic(kept, c, cache, root, pcfg.batch_rows))


def _cache_stem(shard: Path, root: Path) -> str:
    try:
        rel = shard.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:12]) / shard.name
    return "__".join(rel.with_suffix("").parts)


def _materialise_pickapic(items: list[Any], counts: Counter, cache: Path, root: Path, batch_rows: int) -> list[Any]:
    """Write the image bytes the kept items need (once; existing files are reused) and return the
    items with file paths; items whose bytes are missing or not an image are counted and dropped."""
    import pyarrow.parquet as pq

    from instructengine.runs import atomic_write_bytes
    from instructengine.train.data import Item

    refs = {ref for it in items for ref in it.images}
    by_shard: dict[str, dict[int, set[str]]] = {}
    for ref in refs:
        shard, row, col = ref.split(_REF)
        by_shard.setdefault(shard, {}).setdefault(int(row), set()).add(col)
    resolved: dict[str, str | None] = {}
    bad: dict[str, str] = {}
    with _main_process_first():
        for shard, wanted in sorted(by_shard.items()):
            folder = cache / _cache_stem(Path(shard), root)
            # one listing per shard folder (not one glob per image): "<row>_<column>" -> file
            existing = ({p.name.split(".", 1)[0]: p for p in folder.iterdir() if not p.name.startswith(".")}
                        if folder.is_dir() else {})
            todo: dict[int, set[str]] = {}
            for row, cols in wanted.items():
                for col in cols:
                    hit = existing.get(f"{row:08d}_{col}")
                    if hit is not None and hit.stat().st_size > 0:
                        resolved[f"{shard}{_REF}{row}{_REF}{col}"] = str(hit)
                    else:
                        todo.setdefault(row, set()).add(col)
            if not todo:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cols_needed = sorted({c for cs in todo.values() for c in cs})
            start = 0
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=batch_rows, columns=cols_needed):
                stop = start + batch.num_rows
                rows_here = [r for r in todo if start <= r < stop]
                if rows_here:
                    data = {c: batch.column(c) for c in cols_needed}
                    for r in rows_here:
                        for col in todo[r]:
                            ref = f"{shard}{_REF}{r}{_REF}{col}"
                            value = data[col][r - start].as_py()
                            if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
                                value = value.get("bytes")
                            if not isinstance(value, (bytes, bytearray)) or not value:
                                bad[ref] = "image bytes missing"
                                continue
                            suffix = image_suffix(bytes(value))
                            if suffix is None:
                                bad[ref] = "image bytes not a known image format"
                                continue
                            path = folder / f"{r:08d}_{col}{suffix}"
                            atomic_write_bytes(path, bytes(value))
                            resolved[ref] = str(path)
                start = stop
    out = []
    for it in items:
        reasons = [bad[r] for r in it.images if r in bad]
        if reasons:
            counts[reasons[0]] += 1
            continue
        out.append(Item(it.texts, tuple(resolved[r] for r in it.images)))
    return out


class _main_process_first:
    """accelerate's ``main_process_first`` when a distributed state exists (one writer of the image
    cache, the others then read it), a no-op in a plain process."""

    def __enter__(self) -> None:
        self._ctx = None
        from accelerate import PartialState

        # only an existing state: creating one here would fix its device before the trainer does
        if getattr(PartialState, "_shared_state", None) and PartialState().num_processes > 1:
            self._ctx = PartialState().main_process_first()
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


# ----------------------------------------------------------------------------------------------
# prompt lists
# ----------------------------------------------------------------------------------------------


def _prompts_of_file(path: Path, column: str) -> list[Any]:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
        _check_columns(path, names, [column], "data.prompts.column")
        return pq.read_table(path, columns=[column]).column(column).to_pylist()
    if suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    elif suffix in (".jsonl", ".json"):
        df = pd.read_json(path, lines=suffix == ".jsonl")
    else:
        raise ValueError(f"{path}: prompt tables must be .parquet, .csv, .tsv, .jsonl, .json or .txt, not {suffix!r}")
    _check_columns(path, list(df.columns), [column], "data.prompts.column")
    return df[column].tolist()


def read_prompt_list(data_cfg: Any, layout: str, counts: Counter) -> SourceRead:
    """A prompt list (``data.prompts``) -> prompt items (layout 'prompt' only).

    Prompts that are not text or are blank are counted and dropped; repeated prompts too when
    ``deduplicate`` is on.

    Raises:
        FileNotFoundError / ValueError: no file, a missing column, an unknown file type, or a layout
            other than 'prompt'.
    """
    from instructengine.train.data import Item

    if layout != "prompt":
        raise ValueError(f"data.source 'prompts' gives prompts only (for refl, or the candidates stage); layout "
                         f"{layout!r} needs images: use source samples, candidates or pickapic")
    prompts, rows = prompt_list(data_cfg.path, data_cfg.prompts, counts)
    return SourceRead([Item((p,), ()) for p in prompts], None, rows)


def prompt_list(root: str | Path, pcfg: Any, counts: Counter) -> tuple[list[str], int]:
    """(usable prompts in file order, rows read) of a ``PromptListConfig``; drops counted in ``counts``."""
    files = resolve_files(root, pcfg.files, "data.prompts.files")
    out: list[str] = []
    seen: set[str] = set()
    rows = 0
    for path in files:
        for value in _prompts_of_file(path, pcfg.column):
            rows += 1
            if not isinstance(value, str):
                counts["prompt not text"] += 1
                continue
            text = value.strip()
            if not text:
                counts["prompt empty"] += 1
                continue
            if pcfg.deduplicate:
                if text in seen:
                    counts["repeated prompt"] += 1
                    continue
                seen.add(text)
            out.append(text)
    return out, rows


def prompt_instructions(prompts: Sequence[str]) -> list[Any]:
    """Candidates-stage instructions for a prompt list (instead of pairs.parquet).

    Each distinct prompt becomes one instruction with id ``p<sha1(prompt)[:15]>_0`` (``pair_id`` the
    part before ``_0``, ``side`` 0: no pair), so the candidates, the reward scores and the reward
    best/worst baseline (method ``reward_dpo``) run on it unchanged; ids do not depend on list order.

    Raises:
        ValueError: an empty list, or a prompt that is not non-blank text.
    """
    from instructengine.images.candidates import Instruction

    out, seen = [], set()
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {p!r} is not non-blank text; every prompt of the list must be")
        if p in seen:
            continue
        seen.add(p)
        pair_id = "p" + hashlib.sha1(p.encode("utf-8")).hexdigest()[:15]
        out.append(Instruction(f"{pair_id}_0", pair_id, 0, p))
    if not out:
        raise ValueError("the prompt list is empty; the candidates stage needs at least one prompt")
    return out


def prompt_list_instructions(root: str | Path, pcfg: Any, n: int | None = None,
                             seed: int = 0) -> tuple[list[Any], int, Counter]:
    """A prompt list (``PromptListConfig``) -> candidates-stage instructions, optionally a seeded random
    subset of ``n`` prompts (nested in larger ones, :func:`nested_subset`); returns (instructions,
    rows read, dropped-by-reason counts). Pass them to ``run_candidates(cfg, instructions=...)``.

    Raises:
        FileNotFoundError / ValueError: as :func:`prompt_list` and :func:`prompt_instructions`.
    """
    counts: Counter = Counter()
    prompts, rows = prompt_list(root, pcfg, counts)
    if n is not None and n < len(prompts):
        keep = nested_subset(len(prompts), n, seed)
        counts["not in the subset"] += len(prompts) - len(keep)
        prompts = [prompts[i] for i in keep]
    return prompt_instructions(prompts), rows, counts
