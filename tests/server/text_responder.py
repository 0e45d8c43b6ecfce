"""Deterministic scripted answers for the text-stage prompts (taxonomy, entities, pairs).

It reads the "Key: value" lines at the top of the first user message (the packaged templates
start with them) and the schema name from ``response_format``. The answers are built to exercise
every filter: repeated and near-duplicate names, entities far from their subtopic, entities the
confirm step rejects, and invalid instruction pairs (entity missing, both sides identical).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from scripted_server import first_user_text, schema_name

EXTRA_THEMES = [
    "food and drink", "vehicles", "fashion", "sports", "science and technology", "mythology",
    "interior design", "plants and gardens", "outer space", "underwater life", "toys and games",
    "musical instruments",
]
AXIS_WORDS = {
    "theme": ["everyday", "famous", "rare", "miniature", "giant", "ancient"],
    "style": ["watercolor", "oil painting", "pixel art", "ink sketch", "low poly", "pop art"],
    "purpose": ["advertising", "textbook", "game asset", "poster", "greeting card", "museum"],
}
ENTITY_KINDS = ["portrait", "figurine", "poster", "mural", "statue", "postcard", "sculpture"]


def _h(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def fields(body: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in first_user_text(body).splitlines():
        if not line.strip():
            break
        m = re.match(r"^([A-Za-z ]+):\s*(.*)$", line)
        if m:
            out[m.group(1).strip().lower()] = m.group(2).strip()
    return out


class TextStageResponder:
    """Callable ``body -> answer dict``; ``calls`` counts answers per schema name."""

    def __call__(self, body: dict[str, Any]) -> Any:
        name = schema_name(body)
        f = fields(body)
        sample = int(body.get("seed") or 0)
        return getattr(self, name)(f, sample)

    def themes(self, f: dict[str, str], sample: int) -> Any:
        seeds = [s.strip() for s in f["seed themes"].split(";")]
        n = int(f["number"])
        rotated = EXTRA_THEMES[sample % 3 :] + EXTRA_THEMES[: sample % 3]
        # a new theme, a seed in capitals, a near duplicate of a seed, then more new themes
        out = [rotated[0], seeds[0].upper(), seeds[1] + "s"] + rotated[1:]
        return {"themes": out[:n]}

    def subtopics(self, f: dict[str, str], sample: int) -> Any:
        theme, axis, n = f["primary theme"], f["axis"], int(f["number"])
        words = AXIS_WORDS.get(axis, ["general"])
        start = sample % len(words)
        picked = [words[(start + i) % len(words)] for i in range(n + 1)]
        out = [f"{w} {theme}" for w in picked]
        out.insert(1, f"{picked[0]} {theme}s")  # a near duplicate, early so it survives a cut to n
        return {"subtopics": out[:n]}

    def entities(self, f: dict[str, str], sample: int) -> Any:
        subtopic, n = f["subtopic"], int(f["number"])
        k = _h(subtopic)
        kinds = [ENTITY_KINDS[(k + i) % len(ENTITY_KINDS)] for i in range(n)]
        out = [f"{subtopic} {kind}" for kind in kinds]
        # early in the list, so they survive a cut to n: a repeat up to case, an entity far from
        # every subtopic, one the confirm step rejects
        out[1:1] = [out[0].upper(), "quartz xylophone zebra", f"{subtopic} impostor"]
        return {"entities": out[:n]}

    def confirm_entity(self, f: dict[str, str], sample: int) -> Any:
        entity = f["entity"]
        ok = "impostor" not in entity
        return {"belongs": ok, "reason": "fits" if ok else "not a member of the subtopic"}

    def contrast_pairs(self, f: dict[str, str], sample: int) -> Any:
        entity, dim, n = f["entity"], f["dimension"], int(f["number"])
        k = _h(entity, dim)
        pairs = []
        for i in range(n):
            if dim == "content":
                a, b = f"a photo of one red {entity} on a wooden table", f"a photo of three blue {entity} on a wooden table"
            elif dim == "counterfactual":
                a, b = f"a realistic picture of a {entity} in a city park", f"a surreal picture of a {entity} made of glass floating above a city park"
            else:
                a, b = f"a vivid, beautifully lit picture of a {entity} at golden hour", f"a dull, flat, badly lit picture of a {entity} on a grey day"
            if i:
                a, b = a + f" variant {i}", b + f" variant {i}"
            if k % 9 == 0:
                b = "a picture of something else entirely on a grey day"  # entity missing
            elif k % 13 == 0:
                b = a  # identical
            pairs.append({"instruction_1": a, "instruction_2": b})
        return {"pairs": pairs}
