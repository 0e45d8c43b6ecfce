"""Stage 2 of the data pipeline: concrete entities per subtopic.

Reads ``<run>/taxonomy/taxonomy.json`` with ``review.csv`` applied. Writes ``<run>/entities/``:
``entities.parquet`` (columns in :data:`ENTITY_COLUMNS`), ``reviewed_taxonomy.json`` (what was
read), ``manifest.json``, ``config.yaml`` and the resume ledger.
"""

from instructengine.entities.config import EntitiesConfig
from instructengine.entities.stage import ENTITY_COLUMNS, read_entities, run_entities, run_entities_async

__all__ = ["ENTITY_COLUMNS", "EntitiesConfig", "read_entities", "run_entities", "run_entities_async"]
