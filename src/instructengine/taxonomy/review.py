"""``review.csv``: the taxonomy as a spreadsheet people edit before the entities stage.

Columns: ``id, theme, subtopic, axis, action, merge_into``. One row per theme (``id`` like
``T003``, ``subtopic`` empty) and one per subtopic (``id`` like ``T003.S012``). Edits:

* **rename** - change the name in the ``theme`` cell of a theme row or the ``subtopic`` cell of a
  subtopic row (the ``theme`` cell of a subtopic row is informational); the ``axis`` cell may be
  changed too;
* **delete** - set ``action`` to ``delete`` or remove the row (a theme's deletion removes its
  subtopics);
* **merge** - set ``action`` to ``merge`` and ``merge_into`` to the id (or name) of another
  subtopic of the same theme, or of another theme; the merged name becomes an alias of the
  target, a merged theme's subtopics move to the target theme;
* **add** - a row with an empty ``id``, the theme's name and a new subtopic name.

:func:`apply_review` checks every row and raises :class:`ReviewError` naming the line and what
would be valid; it never guesses.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructengine.backends import normalize_text
from instructengine.taxonomy.model import Subtopic, Taxonomy, Theme
from instructengine.errors import UsageError

__all__ = ["COLUMNS", "ReviewError", "ReviewRow", "apply_review", "export_review", "load_reviewed_taxonomy", "read_review"]

COLUMNS = ["id", "theme", "subtopic", "axis", "action", "merge_into"]
ACTIONS = ("keep", "delete", "merge", "add")


class ReviewError(UsageError, ValueError):
    """A row of review.csv that cannot be applied."""


@dataclass
class ReviewRow:
    line: int
    id: str
    theme: str
    subtopic: str
    axis: str
    action: str
    merge_into: str


def theme_id(i: int) -> str:
    return f"T{i + 1:03d}"


def subtopic_id(i: int, j: int) -> str:
    return f"T{i + 1:03d}.S{j + 1:03d}"


def export_review(taxonomy: Taxonomy) -> str:
    """The CSV text for ``taxonomy`` with every action ``keep``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, theme in enumerate(taxonomy.themes):
        writer.writerow([theme_id(i), theme.name, "", "", "keep", ""])
        for j, sub in enumerate(theme.subtopics):
            writer.writerow([subtopic_id(i, j), theme.name, sub.name, sub.axis, "keep", ""])
    return buf.getvalue()


def read_review(path: str | Path) -> list[ReviewRow]:
    """Parse review.csv (UTF-8, with or without a BOM, as spreadsheets write it)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReviewError(
            f"{p}: byte {err.start} is not UTF-8 ({err.reason}); save the file as CSV UTF-8 "
            "(in Excel: 'CSV UTF-8 (comma delimited)', in LibreOffice: character set 'Unicode (UTF-8)')"
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ReviewError(f"{p}: missing columns {missing}; the header must be {','.join(COLUMNS)}")
    rows = []
    for n, raw in enumerate(reader, start=2):
        rec = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(rec.get(c) for c in COLUMNS):
            continue  # blank line
        rows.append(ReviewRow(n, *(rec.get(c, "") for c in COLUMNS)))
    if not rows:
        raise ReviewError(
            f"{p}: no rows under the header, which would delete every theme; restore the rows (delete the "
            "file and re-run the taxonomy stage to get a fresh one), or mark themes action=delete one by one"
        )
    return rows


@dataclass
class _Sub:
    id: str
    name: str
    axis: str
    aliases: list[str]
    action: str = "keep"
    merge_into: str = ""
    line: int = 0


@dataclass
class _Theme:
    id: str
    name: str
    source: str
    aliases: list[str]
    subs: list[_Sub] = field(default_factory=list)
    action: str = "keep"
    merge_into: str = ""
    line: int = 0


def apply_review(taxonomy: Taxonomy, rows: list[ReviewRow], source: str = "review.csv") -> tuple[Taxonomy, dict[str, int]]:
    """Apply the edited rows to ``taxonomy``; return the reviewed taxonomy and counts per edit.

    Raises:
        ReviewError: unknown id or action, a merge target that does not exist or is itself
            deleted/merged, an empty name, two items renamed to the same name.
    """
    def fail(row: ReviewRow | None, msg: str) -> ReviewError:
        where = f"{source}:{row.line}" if row else source
        return ReviewError(f"{where}: {msg}")

    themes: dict[str, _Theme] = {}
    subs: dict[str, tuple[_Theme, _Sub]] = {}
    for i, t in enumerate(taxonomy.themes):
        th = _Theme(theme_id(i), t.name, t.source, list(t.aliases), action="delete")  # no row -> deleted
        themes[th.id] = th
        for j, s in enumerate(t.subtopics):
            sub = _Sub(subtopic_id(i, j), s.name, s.axis, list(s.aliases), action="delete")
            th.subs.append(sub)
            subs[sub.id] = (th, sub)

    counts: Counter[str] = Counter()
    seen: dict[str, int] = {}
    additions: list[ReviewRow] = []
    for row in rows:
        action = (row.action or "keep").lower()
        if action not in ACTIONS:
            raise fail(row, f"action {row.action!r} is not one of {', '.join(ACTIONS)} (empty means keep)")
        if not row.id:
            if action not in ("keep", "add"):
                raise fail(row, f"a row without id adds a subtopic; its action must be 'add' or empty, not {action!r}")
            additions.append(row)
            continue
        if row.id in seen:
            raise fail(row, f"id {row.id} appears twice (first on line {seen[row.id]})")
        seen[row.id] = row.line
        if action == "add":
            raise fail(row, f"action 'add' is for new rows with an empty id, but this row has id {row.id}")
        if action == "merge" and not row.merge_into:
            raise fail(row, "action 'merge' needs merge_into: the id or name of the item to merge into")
        if row.id in themes:
            th = themes[row.id]
            if row.subtopic:
                raise fail(row, f"{row.id} is a theme row; its subtopic cell must be empty (got {row.subtopic!r})")
            if not row.theme and action != "delete":
                raise fail(row, f"theme {row.id} has an empty name; give a name or set action=delete")
            if row.theme and row.theme != th.name:
                counts["renamed_themes"] += 1
                th.aliases.append(th.name)
                th.name = row.theme
            th.action, th.merge_into, th.line = action, row.merge_into, row.line
        elif row.id in subs:
            _, sub = subs[row.id]
            if not row.subtopic and action != "delete":
                raise fail(row, f"subtopic {row.id} has an empty name; give a name or set action=delete")
            if row.subtopic and row.subtopic != sub.name:
                counts["renamed_subtopics"] += 1
                sub.aliases.append(sub.name)
                sub.name = row.subtopic
            if row.axis and row.axis != sub.axis:
                counts["axis_changed"] += 1
                sub.axis = row.axis
            sub.action, sub.merge_into, sub.line = action, row.merge_into, row.line
        else:
            raise fail(row, f"unknown id {row.id!r}; ids come from the exported file (T001, T001.S001, ...)")

    row_at = {r.line: r for r in rows}

    # subtopic merges (within a theme)
    for th in themes.values():
        for sub in th.subs:
            if sub.action != "merge":
                continue
            target = _resolve_sub(th, sub.merge_into)
            if target is None:
                raise fail(row_at[sub.line], f"merge_into {sub.merge_into!r} is not a subtopic of theme {th.name!r} (give its id, e.g. {th.id}.S001, or its name)")
            if target is sub:
                raise fail(row_at[sub.line], "a subtopic cannot be merged into itself")
            if target.action != "keep":
                raise fail(row_at[sub.line], f"merge target {target.id} is itself marked {target.action!r}; merge into a kept subtopic")
            target.aliases += [sub.name, *sub.aliases]
            counts["merged_subtopics"] += 1
    for th in themes.values():
        counts["deleted_subtopics"] += sum(1 for s in th.subs if s.action == "delete" and th.action != "delete")
        th.subs = [s for s in th.subs if s.action == "keep"]

    # additions
    for row in additions:
        th = _resolve_theme(themes, row.theme)
        if th is None or th.action == "delete":
            raise fail(row, f"new subtopic {row.subtopic!r}: theme {row.theme!r} is not a kept theme (use its current name or id)")
        if not row.subtopic:
            raise fail(row, "a row without id adds a subtopic; its subtopic cell is empty")
        th.subs.append(_Sub("", row.subtopic, row.axis or "review", [], line=row.line))
        counts["added_subtopics"] += 1

    # duplicates a rename or addition created inside one theme
    for th in themes.values():
        names: dict[str, _Sub] = {}
        for s in th.subs:
            key = normalize_text(s.name)
            if key in names:
                first = names[key]
                raise fail(row_at.get(s.line), f"theme {th.name!r} would have subtopic {s.name!r} twice (also {first.id or 'line ' + str(first.line)}); use action=merge")
            names[key] = s

    # theme merges
    for th in themes.values():
        if th.action != "merge":
            continue
        target = _resolve_theme(themes, th.merge_into)
        if target is None:
            raise fail(row_at[th.line], f"merge_into {th.merge_into!r} is not a theme (give its id, e.g. T001, or its name)")
        if target is th:
            raise fail(row_at[th.line], "a theme cannot be merged into itself")
        if target.action != "keep":
            raise fail(row_at[th.line], f"merge target {target.id} is itself marked {target.action!r}; merge into a kept theme")
        target.aliases += [th.name, *th.aliases]
        known = {normalize_text(s.name): s for s in target.subs}
        for s in th.subs:
            if normalize_text(s.name) in known:
                known[normalize_text(s.name)].aliases += s.aliases
            else:
                target.subs.append(s)
                known[normalize_text(s.name)] = s
        counts["merged_themes"] += 1
    counts["deleted_themes"] = sum(1 for th in themes.values() if th.action == "delete")

    kept = [th for th in themes.values() if th.action == "keep"]
    names = Counter(normalize_text(th.name) for th in kept)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise ReviewError(f"{source}: theme name {dup[0]!r} used by more than one kept theme; merge them instead")
    out = Taxonomy(
        axes=list(taxonomy.axes),
        themes=[
            Theme(
                name=th.name,
                source=th.source,  # type: ignore[arg-type]
                aliases=_unique(th.aliases),
                subtopics=[Subtopic(name=s.name, axis=s.axis, aliases=_unique(s.aliases)) for s in th.subs],
            )
            for th in kept
        ],
    )
    return out, {k: v for k, v in sorted(counts.items()) if v}


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _resolve_sub(th: _Theme, ref: str) -> _Sub | None:
    for s in th.subs:
        if s.id == ref:
            return s
    key = normalize_text(ref)
    for s in th.subs:
        if normalize_text(s.name) == key or any(normalize_text(a) == key for a in s.aliases):
            return s
    return None


def _resolve_theme(themes: dict[str, _Theme], ref: str) -> _Theme | None:
    if ref in themes:
        return themes[ref]
    key = normalize_text(ref)
    for th in themes.values():
        if normalize_text(th.name) == key or any(normalize_text(a) == key for a in th.aliases):
            return th
    return None


def load_reviewed_taxonomy(taxonomy_dir: str | Path) -> tuple[Taxonomy, dict[str, Any]]:
    """``taxonomy.json`` with ``review.csv`` (when present) applied; returns (taxonomy, edit counts)."""
    root = Path(taxonomy_dir)
    taxonomy = Taxonomy.read(root / "taxonomy.json")
    review = root / "review.csv"
    if not review.is_file():
        return taxonomy, {}
    return apply_review(taxonomy, read_review(review), source=str(review))
