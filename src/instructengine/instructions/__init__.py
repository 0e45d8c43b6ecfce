"""Stage 3 of the data pipeline: contrasting instruction pairs per entity and dimension.

Reads ``<run>/entities/entities.parquet``. Writes ``<run>/instructions/``: ``pairs.parquet``
(columns in :data:`PAIR_COLUMNS`; what the image stage reads), ``manifest.json``, ``config.yaml``
and the resume ledger.
"""

from instructengine.instructions.config import PairsConfig
from instructengine.instructions.stage import PAIR_COLUMNS, read_pairs, run_pairs, run_pairs_async
from instructengine.instructions.validate import check_pair, mentions

__all__ = ["PAIR_COLUMNS", "PairsConfig", "check_pair", "mentions", "read_pairs", "run_pairs", "run_pairs_async"]
