"""ShapesWorld scenes and their captions.

A :class:`Scene` holds one or two :class:`Group` s of identical objects (count, size, colour,
shape, intact or broken), an optional spatial relation between the two groups, and a style
(vivid or dull palette, clean or noisy background). Every scene has exactly one caption, and
:func:`parse_caption` reads any caption of this grammar back into its scene::

    caption := group [relation group] [", " palette] [", " background " background"]
    group   := count size ["broken"] colour shape(s)
    e.g.    "two small red circles left of a large broken blue square , dull , noisy background"

Style words that a caption leaves out are free: the renderer draws them at random and the oracle
does not judge them. Two groups in one scene always differ in colour, so the oracle can tell which
object belongs to which group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
from instructengine.errors import UsageError

SHAPES = ("circle", "square", "triangle")
#: colour name -> (vivid RGB in [0, 1], hue in degrees); hues are 60 degrees apart.
COLOURS: dict[str, tuple[tuple[float, float, float], float]] = {
    "red": ((0.92, 0.08, 0.08), 0.0),
    "yellow": ((0.92, 0.92, 0.08), 60.0),
    "green": ((0.08, 0.80, 0.08), 120.0),
    "cyan": ((0.08, 0.85, 0.92), 184.0),
    "blue": ((0.10, 0.15, 0.95), 236.0),
    "magenta": ((0.88, 0.10, 0.88), 300.0),
}
COUNTS = (1, 2, 3, 4)
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
WORD_COUNTS = {w: n for n, w in COUNT_WORDS.items()} | {"one": 1}
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
PALETTES = ("vivid", "dull")
BACKGROUNDS = ("clean", "noisy")
#: the most objects one group may hold when the scene has two groups (they share the canvas)
MAX_COUNT_IN_RELATION = 2


class CaptionError(UsageError, ValueError):
    """A caption does not follow the ShapesWorld grammar (the message says where)."""


@dataclass(frozen=True)
class Group:
    count: int
    size: str
    colour: str
    shape: str
    intact: bool = True

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ValueError(f"count {self.count!r} not in {COUNTS}")
        if self.size not in SIZES:
            raise ValueError(f"size {self.size!r} not in {SIZES}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} not in {tuple(COLOURS)}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} not in {SHAPES}")

    @property
    def key(self) -> tuple[int, str, str, str]:
        """The attribute combination held out (or not) from training: (count, size, colour, shape)."""
        return (self.count, self.size, self.colour, self.shape)

    def text(self) -> str:
        words = [COUNT_WORDS[self.count], self.size]
        if not self.intact:
            words.append("broken")
        words += [self.colour, self.shape + ("s" if self.count > 1 else "")]
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    relation: str | None = None
    palette: str | None = None  # None: not stated in the caption (drawn at random when rendered)
    background: str | None = None

    def __post_init__(self) -> None:
        if len(self.groups) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 groups, got {len(self.groups)}")
        if len(self.groups) == 2:
            if self.relation not in RELATIONS:
                raise ValueError(f"two groups need a relation in {RELATIONS}, got {self.relation!r}")
            if self.groups[0].colour == self.groups[1].colour:
                raise ValueError("the two groups of a scene must differ in colour")
            if max(g.count for g in self.groups) > MAX_COUNT_IN_RELATION:
                raise ValueError(f"groups in a relation hold at most {MAX_COUNT_IN_RELATION} objects")
        elif self.relation is not None:
            raise ValueError("a relation needs two groups")
        if self.palette not in (None, *PALETTES):
            raise ValueError(f"palette {self.palette!r} not in {PALETTES}")
        if self.background not in (None, *BACKGROUNDS):
            raise ValueError(f"background {self.background!r} not in {BACKGROUNDS}")

    @property
    def caption(self) -> str:
        text = self.groups[0].text()
        if self.relation:
            text += f" {self.relation} {self.groups[1].text()}"
        if self.palette:
            text += f" , {self.palette}"
        if self.background:
            text += f" , {self.background} background"
        return text

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)

    def group_keys(self) -> tuple[tuple[int, str, str, str], ...]:
        return tuple(g.key for g in self.groups)

    def with_style(self, palette: str | None, background: str | None) -> "Scene":
        return replace(self, palette=palette, background=background)


def _expect(tokens: list[str], i: int, what: str, allowed: tuple[str, ...] | dict) -> str:
    if i >= len(tokens):
        raise CaptionError(f"caption ends where {what} was expected (one of {sorted(allowed)})")
    if tokens[i] not in allowed:
        raise CaptionError(f"word {i} {tokens[i]!r}: expected {what}, one of {sorted(allowed)}")
    return tokens[i]


def _parse_group(tokens: list[str], i: int) -> tuple[Group, int]:
    count = WORD_COUNTS[_expect(tokens, i, "a count", WORD_COUNTS)]
    size = _expect(tokens, i + 1, "a size", SIZES)
    i += 2
    intact = True
    if i < len(tokens) and tokens[i] == "broken":
        intact, i = False, i + 1
    colour = _expect(tokens, i, "a colour", COLOURS)
    noun = tokens[i + 1] if i + 1 < len(tokens) else ""
    plural = noun.endswith("s")
    shape = noun[:-1] if plural else noun
    if shape not in SHAPES:
        raise CaptionError(f"word {i + 1} {noun!r}: expected a shape, one of {SHAPES} (plural with 's')")
    if plural != (count > 1):
        raise CaptionError(f"word {i + 1} {noun!r}: count {count} needs {'plural' if count > 1 else 'singular'}")
    return Group(count, size, colour, shape, intact), i + 2


def parse_caption(caption: str) -> Scene:
    """Read a caption back into its :class:`Scene`. Raises :class:`CaptionError` when it is not valid."""
    tokens = caption.replace(",", " , ").split()
    if not tokens:
        raise CaptionError("empty caption")
    g1, i = _parse_group(tokens, 0)
    groups, relation = [g1], None
    if i < len(tokens) and tokens[i] != ",":
        if tokens[i] in ("above", "below"):
            relation, i = tokens[i], i + 1
        elif tokens[i] in ("left", "right") and i + 1 < len(tokens) and tokens[i + 1] == "of":
            relation, i = f"{tokens[i]} of", i + 2
        else:
            raise CaptionError(f"word {i} {tokens[i]!r}: expected a relation {RELATIONS} or ','")
        g2, i = _parse_group(tokens, i)
        groups.append(g2)
    palette = background = None
    while i < len(tokens):
        _expect(tokens, i, "','", {","})
        word = _expect(tokens, i + 1, "a palette or background", set(PALETTES) | set(BACKGROUNDS))
        if word in PALETTES:
            if palette or background:
                raise CaptionError(f"word {i + 1} {word!r}: palette stated twice or after the background")
            palette, i = word, i + 2
        else:
            _expect(tokens, i + 2, "'background'", {"background"})
            if background:
                raise CaptionError("background stated twice")
            background, i = word, i + 3
    try:
        return Scene(tuple(groups), relation, palette, background)
    except ValueError as e:
        raise CaptionError(f"{caption!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Held-out attribute combinations (ShapesBench) and the sampler of training scenes
# ---------------------------------------------------------------------------------------------

HELDOUT_GROUP_FRACTION = 0.1
HELDOUT_SCENE_FRACTION = 0.2


def _bucket(key: tuple) -> float:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def all_group_keys() -> list[tuple[int, str, str, str]]:
    return [(n, z, c, s) for n in COUNTS for z in SIZES for c in COLOURS for s in SHAPES]


def is_heldout_key(key: tuple[int, str, str, str]) -> bool:
    """True for the (count, size, colour, shape) group combinations reserved for ShapesBench.

    A fixed hash, so every process agrees without shared state (~10% of the 144 combinations).
    """
    return _bucket(("shapesbench-group-v1", key)) < HELDOUT_GROUP_FRACTION


def heldout_keys() -> list[tuple[int, str, str, str]]:
    return [k for k in all_group_keys() if is_heldout_key(k)]


def scene_key(scene: Scene) -> tuple:
    """The scene's full attribute combination (what a caption states, nothing else)."""
    groups = tuple((g.count, g.size, g.colour, g.shape, g.intact) for g in scene.groups)
    return (groups, scene.relation, scene.palette, scene.background)


def scene_is_heldout(scene: Scene) -> bool:
    """True when a scene belongs to ShapesBench's side of the split: it contains a held-out group
    combination, or its full attribute combination is one of the ~20% held out by hash.

    No training caption (pre-training, contrastive model, data pipeline) is ever held out.
    """
    return any(is_heldout_key(k) for k in scene.group_keys()) or (
        _bucket(("shapesbench-scene-v1", scene_key(scene))) < HELDOUT_SCENE_FRACTION
    )


@dataclass
class SceneSampler:
    """Draws random scenes; ``split='train'`` never yields a held-out group, ``'heldout'`` always has one.

    Probabilities are the world's difficulty knobs (documented in docs/shapesworld.md).
    """

    split: str = "train"
    p_relation: float = 0.3
    p_broken: float = 0.2
    p_state_palette: float = 0.5
    p_state_background: float = 0.5
    max_count: int = 4
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    def __post_init__(self) -> None:
        if self.split not in ("train", "heldout", "any"):
            raise ValueError(f"split must be 'train', 'heldout' or 'any', got {self.split!r}")

    def _group(self, max_count: int, exclude_colour: str | None = None) -> Group:
        r = self.rng
        colours = [c for c in COLOURS if c != exclude_colour]
        return Group(
            count=int(r.integers(1, max_count + 1)),
            size=SIZES[r.integers(len(SIZES))],
            colour=colours[r.integers(len(colours))],
            shape=SHAPES[r.integers(len(SHAPES))],
            intact=bool(r.random() >= self.p_broken),
        )

    def draw(self) -> Scene:
        r = self.rng
        for _ in range(10_000):
            if r.random() < self.p_relation:
                g1 = self._group(min(self.max_count, MAX_COUNT_IN_RELATION))
                g2 = self._group(min(self.max_count, MAX_COUNT_IN_RELATION), exclude_colour=g1.colour)
                groups, rel = (g1, g2), RELATIONS[r.integers(len(RELATIONS))]
            else:
                groups, rel = (self._group(self.max_count),), None
            palette = PALETTES[r.integers(2)] if r.random() < self.p_state_palette else None
            background = BACKGROUNDS[r.integers(2)] if r.random() < self.p_state_background else None
            scene = Scene(groups, rel, palette, background)
            held = scene_is_heldout(scene)
            if self.split == "any" or held == (self.split == "heldout"):
                return scene
        raise RuntimeError("could not draw a scene for this split (are the probabilities sensible?)")

    def __iter__(self) -> Iterator[Scene]:
        while True:
            yield self.draw()
