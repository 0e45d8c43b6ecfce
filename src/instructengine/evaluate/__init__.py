"""Evaluation harness: prompt sets, seeded image generation, scorers, VQA/judge, Table-1 reports.

Importing this package imports nothing heavy. Entry points:

* :func:`instructengine.evaluate.runner.evaluate` — generate + score + summarise (``instructengine eval``);
* :func:`instructengine.evaluate.report.report` — tables, charts, grid (``instructengine report``);
* :mod:`instructengine.evaluate.benchmarks` — DrawBench and file loaders, ``register_benchmark``.

Images come from the one generation stack (:mod:`instructengine.generation`, the same as the
candidates stage) and scores from :mod:`instructengine.scorers` (the same as best-of-N).

The on-disk layout is described in :mod:`instructengine.evaluate.storage` and docs/evaluation.md.
"""

from instructengine.evaluate.benchmarks import PromptSet, load_benchmark, load_prompt_file, register_benchmark
from instructengine.scorers.base import ScorerContext, build_scorer, register_scorer

__all__ = [
    "PromptSet",
    "ScorerContext",
    "build_scorer",
    "load_benchmark",
    "load_prompt_file",
    "register_benchmark",
    "register_scorer",
]
