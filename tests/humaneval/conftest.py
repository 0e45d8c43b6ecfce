import pytest

from .evaldirs import build_eval_run


@pytest.fixture
def two_runs(tmp_path):
    """Two evaluation folders (6 prompts, seed 0) that can form a study."""
    return [build_eval_run(tmp_path, "instructengine", style=0), build_eval_run(tmp_path, "baseline", style=1)]
