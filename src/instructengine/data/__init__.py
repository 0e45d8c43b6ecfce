"""The preference-dataset format shared by the data pipeline (writer) and the trainer (reader)."""

from instructengine.data.schema import DIMENSIONS, SAMPLE_COLUMNS, load_samples, validate_samples

__all__ = ["DIMENSIONS", "SAMPLE_COLUMNS", "load_samples", "validate_samples"]
