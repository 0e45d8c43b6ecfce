"""Stage 1 of the data pipeline: the taxonomy of text-to-image use.

Reads: the seed themes (config). Writes ``<run>/taxonomy/``: ``taxonomy.json`` (themes, each with
subtopics along the configured axes), ``review.csv`` (for people to edit; read back by
:func:`load_reviewed_taxonomy` before the entities stage), ``manifest.json``, ``config.yaml`` and
the resume ledger ``progress-<hash>.jsonl``.
"""

from instructengine.taxonomy.config import TaxonomyConfig
from instructengine.taxonomy.model import Subtopic, Taxonomy, Theme
from instructengine.taxonomy.review import ReviewError, apply_review, export_review, load_reviewed_taxonomy, read_review
from instructengine.taxonomy.stage import run_taxonomy, run_taxonomy_async

__all__ = [
    "ReviewError",
    "Subtopic",
    "Taxonomy",
    "TaxonomyConfig",
    "Theme",
    "apply_review",
    "export_review",
    "load_reviewed_taxonomy",
    "read_review",
    "run_taxonomy",
    "run_taxonomy_async",
]
