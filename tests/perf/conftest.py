"""Benchmark smoke tests: one CPU thread (two stall in OpenMP waits on a loaded 2-core machine)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield
