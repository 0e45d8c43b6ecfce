"""The rule-based instruction backend of ShapesWorld: it plays the LLM of the data pipeline.

It implements :class:`instructengine.backends.InstructionBackend` with templates over the caption
grammar, so the taxonomy, entity and instruction stages run unchanged on it:

* themes are shape families ("circles", "squares", "triangles");
* subtopics fix one more attribute, per axis: ``theme`` -> colour ("red circles"),
  ``style`` -> palette ("vivid circles"), ``time and space`` -> size ("small circles"); the axes
  with no analogue in this world (``purpose``, ``vertical domain``) yield nothing;
* entities are concrete objects ("small red circle"). Like an LLM, the backend sometimes proposes
  an entity that does not belong (a different colour or shape), so the CLIP filter and the yes/no
  check have real work; :meth:`confirm_entity` answers that check exactly;
* instruction pairs contrast along the three dimensions: *content* (count, the relation to a
  companion group, or the companion itself), *counterfactual* (intact vs broken), *aesthetics*
  (vivid + clean background vs dull + noisy background).

No instruction it writes is a ShapesBench (held-out) scene. Answers are deterministic functions of
the request and the ``sample`` index.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from instructengine.shapes.scene import (
    COLOURS, COUNTS, MAX_COUNT_IN_RELATION, PALETTES, RELATIONS, SHAPES, SIZES, Group, Scene,
    scene_is_heldout,
)

AXIS_ATTRIBUTE = {"theme": "colour", "style": "palette", "time and space": "size"}
SHAPE_THEMES = {f"{s}s": s for s in SHAPES}


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _shape_of(text: str) -> str | None:
    for word in text.lower().split():
        if word in SHAPE_THEMES:
            return SHAPE_THEMES[word]
        if word in SHAPES:
            return word
    return None


def _words(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").split())


def parse_entity(entity: str) -> tuple[str, str, str] | None:
    """``"small red circle"`` -> ("small", "red", "circle"), or None when it is not an entity."""
    words = entity.lower().split()
    if len(words) != 3 or words[0] not in SIZES or words[1] not in COLOURS or words[2] not in SHAPES:
        return None
    return words[0], words[1], words[2]


class ShapesRuleBackend:
    """Offline instruction backend for ShapesWorld (see the module docstring)."""

    fingerprint = "shapes-rules-v1"

    def __init__(self, off_topic_rate: float = 0.15, seed: int = 0):
        if not 0 <= off_topic_rate < 1:
            raise ValueError(f"off_topic_rate must be in [0, 1), got {off_topic_rate}")
        self.off_topic_rate = off_topic_rate
        self.seed = seed
        self.requests = 0

    def usage(self) -> dict[str, int]:
        return {"requests": self.requests}

    async def propose_themes(self, seeds: list[str], n: int, sample: int) -> list[str]:
        self.requests += 1
        themes = list(SHAPE_THEMES)
        _rng(self.seed, "themes", sample).shuffle(themes)
        return themes[:n]

    async def propose_subtopics(self, theme: str, axis: str, n: int, sample: int) -> list[str]:
        self.requests += 1
        shape = _shape_of(theme)
        attribute = AXIS_ATTRIBUTE.get(axis)
        if shape is None or attribute is None:
            return []
        values = {"colour": list(COLOURS), "palette": list(PALETTES), "size": list(SIZES)}[attribute]
        out = [f"{v} {shape}s" for v in values]
        _rng(self.seed, "subtopics", theme, axis, sample).shuffle(out)
        return out[:n]

    def _fixed(self, subtopic: str) -> dict[str, str]:
        words = _words(subtopic)
        fixed = {"shape": _shape_of(subtopic) or ""}
        for attr, values in (("colour", COLOURS), ("size", SIZES), ("palette", PALETTES)):
            for v in values:
                if v in words:
                    fixed[attr] = v
        return fixed

    async def propose_entities(self, theme: str, subtopic: str, n: int) -> list[str]:
        self.requests += 1
        fixed = self._fixed(subtopic)
        if not fixed["shape"]:
            return []
        rng = _rng(self.seed, "entities", theme, subtopic)
        sizes = [fixed["size"]] if "size" in fixed else list(SIZES)
        colours = [fixed["colour"]] if "colour" in fixed else list(COLOURS)
        out = [f"{z} {c} {fixed['shape']}" for z in sizes for c in colours]
        rng.shuffle(out)
        out = out[:n]
        if out and rng.random() < self.off_topic_rate * len(out):
            # an entity that does not belong, as LLMs sometimes propose
            wrong_shape = [s for s in SHAPES if s != fixed["shape"]][rng.integers(2)]
            wrong_colour = [c for c in COLOURS if c != fixed.get("colour")][rng.integers(5 if "colour" in fixed else 6)]
            z = sizes[rng.integers(len(sizes))]
            out[int(rng.integers(len(out)))] = f"{z} {wrong_colour} {wrong_shape}"
        return out

    async def confirm_entity(self, theme: str, subtopic: str, entity: str) -> bool:
        self.requests += 1
        parsed = parse_entity(entity)
        if parsed is None:
            return False
        size, colour, shape = parsed
        fixed = self._fixed(subtopic)
        return (shape == fixed["shape"] and shape == _shape_of(theme)
                and fixed.get("colour", colour) == colour and fixed.get("size", size) == size)

    async def contrast_pairs(self, theme: str, subtopic: str, entity: str, dimension: str,
                             n: int) -> list[tuple[str, str]]:
        self.requests += 1
        parsed = parse_entity(entity)
        if parsed is None:
            from instructengine.backends import DropItem

            raise DropItem("not_a_shapes_entity", f"{entity!r} is not '<size> <colour> <shape>'")
        makers = {"content": self._content, "counterfactual": self._counterfactual,
                  "aesthetics": self._aesthetics}
        if dimension not in makers:
            raise ValueError(f"unknown dimension {dimension!r}; expected one of {sorted(makers)}")
        size, colour, shape = parsed
        rng = _rng(self.seed, "pairs", entity, dimension)
        palette_hint = self._fixed(subtopic).get("palette")
        pairs: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(50 * max(n, 1)):
            if len(pairs) >= n:
                break
            made = makers[dimension](rng, size, colour, shape, palette_hint)
            if made is None:
                continue
            a, b = made
            if scene_is_heldout(a) or scene_is_heldout(b):
                continue
            pair = (a.caption, b.caption)
            if pair in seen:
                continue
            seen.add(pair)
            pairs.append(pair)
        return pairs

    # ---- the three dimensions -------------------------------------------------------------

    @staticmethod
    def _group(rng, size, colour, shape, max_count=4, intact=True) -> Group:
        return Group(int(rng.integers(1, max_count + 1)), size, colour, shape, intact)

    @staticmethod
    def _style(rng, palette_hint):
        palette = palette_hint or (PALETTES[rng.integers(2)] if rng.random() < 0.4 else None)
        background = ("clean", "noisy")[rng.integers(2)] if rng.random() < 0.4 else None
        return palette, background

    def _companion(self, rng, colour) -> Group:
        others = [c for c in COLOURS if c != colour]
        return Group(int(rng.integers(1, MAX_COUNT_IN_RELATION + 1)), SIZES[rng.integers(2)],
                     others[rng.integers(len(others))], SHAPES[rng.integers(3)], bool(rng.random() < 0.85))

    def _content(self, rng, size, colour, shape, palette_hint):
        palette, background = self._style(rng, palette_hint)
        kind = ("count", "relation", "companion")[rng.integers(3)]
        if kind == "count":
            g = self._group(rng, size, colour, shape)
            other = [c for c in COUNTS if c != g.count][rng.integers(3)]
            return (Scene((g,), None, palette, background),
                    Scene((replace(g, count=other),), None, palette, background))
        g = self._group(rng, size, colour, shape, MAX_COUNT_IN_RELATION)
        comp = self._companion(rng, colour)
        rel = RELATIONS[rng.integers(4)]
        a = Scene((g, comp), rel, palette, background)
        if kind == "relation":
            other = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
            return a, replace(a, relation=other)
        comp2 = self._companion(rng, colour)
        if comp2 == comp:
            return None
        return a, Scene((g, comp2), rel, palette, background)

    def _counterfactual(self, rng, size, colour, shape, palette_hint):
        palette, background = self._style(rng, palette_hint)
        if rng.random() < 0.7:
            g = self._group(rng, size, colour, shape)
            return (Scene((g,), None, palette, background),
                    Scene((replace(g, intact=False),), None, palette, background))
        g = self._group(rng, size, colour, shape, MAX_COUNT_IN_RELATION)
        comp = self._companion(rng, colour)
        a = Scene((g, comp), RELATIONS[rng.integers(4)], palette, background)
        return a, replace(a, groups=(replace(g, intact=False), comp))

    def _aesthetics(self, rng, size, colour, shape, palette_hint):
        g = self._group(rng, size, colour, shape, intact=bool(rng.random() < 0.85))
        if rng.random() < 0.3:
            g = replace(g, count=min(g.count, MAX_COUNT_IN_RELATION))
            s = Scene((g, self._companion(rng, colour)), RELATIONS[rng.integers(4)])
        else:
            s = Scene((g,))
        return s.with_style("vivid", "clean"), s.with_style("dull", "noisy")
