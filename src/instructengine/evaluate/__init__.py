"""Evaluation harness: prompt sets, seeded image generation, scorers, VQA/judge, Table-1 reports.

Importing this package imports nothing heavy. Entry points:

* :func:`instructengine.evaluate.runner.evaluate` — generate + score + summarise (``instructengine eval``);
* :func:`instructengine.evaluate.report.report` — tables, charts, grid (``instructengine report``);
* :mod:`instructengine.evaluate.scorers` — ``score(images, prompts) -> np.ndarray`` scorers and their registry;
* :mod:`instructengine.evaluate.benchmarks` — DrawBench and file loaders, ``register_benchmark``;
* :mod:`instructengine.evaluate.generation` — the generator protocol, diffusers generator, ``register_generator``.

The on-disk layout is described in :mod:`instructengine.evaluate.storage` and docs/evaluation.md.
"""

from instructengine.evaluate.benchmarks import PromptSet, load_benchmark, load_prompt_file, register_benchmark
from instructengine.evaluate.generation import register_generator
from instructengine.evaluate.scorers.base import ScorerContext, build_scorer, register_scorer

__all__ = [
    "PromptSet",
    "ScorerContext",
    "build_scorer",
    "load_benchmark",
    "load_prompt_file",
    "register_benchmark",
    "register_generator",
    "register_scorer",
]
