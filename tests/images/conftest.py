"""Fixtures of the image-stage tests: one CPU thread, ShapesWorld pairs, a tiny ShapesWorld model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # images_helpers
sys.path.insert(0, str(HERE.parent / "server"))  # scripted_server, text_responder
sys.path.insert(0, str(HERE.parent / "llm"))  # tiny_clip


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shapes_text_run(tmp_path_factory):
    """A run folder whose text stages ran on ShapesWorld's rule backend (pairs.parquet and manifests)."""
    from images_helpers import run_shapes_text_stages

    run = tmp_path_factory.mktemp("shapes_text") / "run"
    run_shapes_text_stages(run)
    return run


@pytest.fixture(scope="session")
def tiny_shapes_model(tmp_path_factory):
    """A randomly initialised tiny ShapesPipeline saved as a diffusers folder."""
    from images_helpers import save_tiny_shapes_pipeline

    return save_tiny_shapes_pipeline(tmp_path_factory.mktemp("tiny_shapes") / "pipe")
