"""Checks of one instruction pair: both mention the entity, they differ, lengths are in bounds."""

from __future__ import annotations

import re

from instructengine.backends import normalize_text

__all__ = ["check_pair", "mentions"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(normalize_text(text))


def mentions(text: str, entity: str) -> bool:
    """True when every word of ``entity`` occurs in ``text`` as a word or a word's start, allowing
    a changed last letter for words over three letters ("fox" ~ "foxes", "city" ~ "cities").
    Irregular forms ("mouse"/"mice") do not match: such pairs are dropped and counted."""
    words = _words(text)
    for token in _words(entity):
        stem = token if len(token) <= 3 else token[:-1]
        if not any(w == token or w.startswith(stem) for w in words):
            return False
    return True


def check_pair(x1: str, x2: str, entity: str, min_words: int, max_words: int, require_entity: bool = True) -> str | None:
    """None when the pair is valid, else the drop reason."""
    n1, n2 = len(_words(x1)), len(_words(x2))
    if min(n1, n2) < min_words:
        return "too_short"
    if max(n1, n2) > max_words:
        return "too_long"
    if normalize_text(x1) == normalize_text(x2):
        return "identical"
    if require_entity and not (mentions(x1, entity) and mentions(x2, entity)):
        return "missing_entity"
    return None
