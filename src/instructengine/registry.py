"""One registry of pluggable components, filled by the library and by backend bundles.

Every component a config can name is looked up here by *kind* (what sort of thing it is) and
*name* (which one)::

    generator            image generators (candidates and evaluation): factory(cfg: GeneratorConfig)
    judge                image judges of the data pipeline: factory(cfg: JudgeConfig, run_dir)
    scorer               image-text scorers: factory(options: dict, context: ScorerContext)
    benchmark            named prompt sets: loader() -> PromptSet | DataFrame
    model                training adapters: factory(cfg: ModelConfig) -> ModelAdapter
    tiny_model           tiny random-weight stand-ins: factory(out_dir, seed) -> path
    instruction_backend  text-stage backends besides 'llm': factory(**options) -> InstructionBackend
    embedder             text embedders besides 'clip': factory(**options) -> TextEmbedder
    validation_prompts   held-out prompt sets for hyper-parameter selection: factory(out_path) -> path
    data_builder         data preparation steps of the paper experiments: builder(**options) -> path
    cli                  command groups mounted on ``instructengine``: a typer app (or "module:attr")

A config names a component with ONE key, ``kind``: a registered name (``diffusers``,
``pickscore``, ``shapes_render``) or an import path ``"package.module:attribute"``; the options
of the component sit beside it. :func:`resolve` turns either into the object, :func:`instantiate`
calls it.

Bundles plug in through the entry-point group ``instructengine.bundles``: each entry point is a
function ``register(registry_module)`` that calls :func:`register` for what it brings (the
ShapesWorld bundle is one: ``pyproject.toml`` names it). Bundles are loaded on the first lookup,
so no library module imports or names a bundle.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

__all__ = [
    "KINDS",
    "available",
    "check_name",
    "instantiate",
    "load_bundles",
    "load_object",
    "register",
    "resolve",
]

KINDS = (
    "generator",
    "judge",
    "scorer",
    "benchmark",
    "model",
    "tiny_model",
    "instruction_backend",
    "embedder",
    "validation_prompts",
    "data_builder",
    "cli",
)
ENTRY_POINT_GROUP = "instructengine.bundles"

#: the library's own components (bundles add theirs through :func:`register`)
_BUILTIN: dict[str, dict[str, str]] = {
    "generator": {"diffusers": "instructengine.generation.diffusers_pipeline:DiffusersGenerator"},
    "judge": {
        "vlm": "instructengine.images.judge:make_vlm_judge",
        "none": "instructengine.images.judge:make_keep_all_judge",
    },
    "scorer": {
        "pickscore": "instructengine.scorers.clip_scorers:make_pickscore",
        "clip": "instructengine.scorers.clip_scorers:make_clip_score",
        "aesthetic": "instructengine.scorers.clip_scorers:make_aesthetic",
        "hpsv2": "instructengine.scorers.clip_scorers:make_hpsv2",
        "ict": "instructengine.scorers.clip_scorers:make_ict",
        "hp": "instructengine.scorers.clip_scorers:make_hp",
        "ict_hp": "instructengine.scorers.clip_scorers:make_ict_hp",
        "imagereward": "instructengine.scorers.blip_scorers:make_imagereward",
        "blip": "instructengine.scorers.blip_scorers:make_blip_score",
        "vqa": "instructengine.evaluate.vqa:make_vqa_scorer",
        "vila": "instructengine.scorers.vila:make_vila",
    },
    "benchmark": {"drawbench": "instructengine.evaluate.benchmarks:load_drawbench"},
    "model": {
        "sd15": "instructengine.train.models:load_sd15",
        "sdxl": "instructengine.train.models:load_sdxl",
    },
    "tiny_model": {
        "sd15": "instructengine.train.tiny:tiny_sd15_components",
        "sdxl": "instructengine.train.tiny:tiny_sdxl_components",
    },
    "instruction_backend": {},  # "llm" is built from the `llm` section (instructengine.text_pipeline)
    "embedder": {"ngram": "instructengine.backends:NgramHashEmbedder"},  # "clip" from its own fields
    "validation_prompts": {},
    "data_builder": {"data_pipeline": "instructengine.experiments.table1:data_pipeline_step"},
    "cli": {},
}
_REGISTRY: dict[str, dict[str, Any]] = {k: dict(_BUILTIN.get(k, {})) for k in KINDS}
_BUNDLES_LOADED = False
_LOCK = threading.RLock()


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown component kind {kind!r}; one of {list(KINDS)}")


def register(kind: str, name: str, target: Any, *, replace: bool = True) -> None:
    """Make ``name`` usable as a ``kind`` in configs; ``target`` is the object or ``"module:attr"``.

    Raises:
        ValueError: unknown kind, a name holding ':' (reserved for import paths), or ``replace=False``
            with the name already taken.
    """
    _check_kind(kind)
    if not name or ":" in name:
        raise ValueError(f"component name {name!r} must be non-empty and hold no ':' (import paths are named directly)")
    with _LOCK:
        if not replace and name in _REGISTRY[kind]:
            raise ValueError(f"{kind} {name!r} is already registered")
        _REGISTRY[kind][name] = target


def load_bundles() -> list[str]:
    """Load every bundle of the ``instructengine.bundles`` entry-point group once; returns their names.

    A bundle whose import fails raises: a half-registered bundle would give confusing errors later.
    """
    global _BUNDLES_LOADED
    with _LOCK:
        if _BUNDLES_LOADED:
            return []
        _BUNDLES_LOADED = True  # set first: a bundle's register() may itself look things up
        from importlib.metadata import entry_points

        names = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            import instructengine.registry as me

            ep.load()(me)
            names.append(ep.name)
        return names


def load_object(path: str, what: str = "component") -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Raises:
        ValueError: ``path`` is not of that form, or the module/attribute cannot be imported
            (the message starts with ``what``).
    """
    mod, _, attr = str(path).partition(":")
    if not mod or not attr:
        raise ValueError(f"{what} {path!r} is not an import path of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(mod)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {mod!r} ({err})") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        raise ValueError(f"{what} {path!r}: module {mod!r} has no attribute {attr!r}") from None


def available(kind: str) -> list[str]:
    """The registered names of ``kind`` (bundles included), sorted."""
    _check_kind(kind)
    load_bundles()
    return sorted(_REGISTRY[kind])


def resolve(kind: str, name: str, where: str | None = None) -> Any:
    """The object registered as ``name`` for ``kind``, or the one an import path names.

    Raises:
        ValueError: an unknown name (the message lists the registered ones and says how to name an
            import path), or an import path that cannot be imported.
    """
    _check_kind(kind)
    where = where or kind
    if ":" in str(name):
        return load_object(name, where)
    load_bundles()
    with _LOCK:
        target = _REGISTRY[kind].get(name)
    if target is None:
        raise ValueError(f"{where}: unknown {kind} {name!r}; registered: {sorted(_REGISTRY[kind])} "
                         "(or an import path 'package.module:factory')")
    if isinstance(target, str):
        target = load_object(target, f"{where} {name!r}")
        with _LOCK:
            _REGISTRY[kind][name] = target
    return target


def check_name(kind: str, name: str, builtin: tuple[str, ...] = ()) -> str:
    """Validate a config's component name (for pydantic validators): a registered name, one of
    ``builtin`` (names the caller builds itself), or an import path; returns ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if ":" in str(name) or name in builtin or name in available(kind):
        return name
    raise ValueError(f"unknown {kind} {name!r}; registered: {sorted({*builtin, *available(kind)})} "
                     "(or an import path 'package.module:factory')")


def instantiate(kind: str, name: str, *args: Any, where: str | None = None, **kwargs: Any) -> Any:
    """``resolve(kind, name)(*args, **kwargs)``: build a component from its config."""
    factory = resolve(kind, name, where)
    if not callable(factory):
        raise ValueError(f"{where or kind} {name!r} resolves to {type(factory).__name__}, which is not callable")
    return factory(*args, **kwargs)

