import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))  # tiny_clip

from scripted_server import ScriptedServer  # noqa: E402
from text_responder import TextStageResponder  # noqa: E402


@pytest.fixture
def server():
    with ScriptedServer(TextStageResponder()) as srv:
        yield srv
