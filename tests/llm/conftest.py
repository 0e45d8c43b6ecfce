import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from scripted_server import ScriptedServer  # noqa: E402


@pytest.fixture
def start_server():
    """Start scripted servers on 127.0.0.1 for one test; all are stopped at its end."""
    servers = []

    def start(responder, **kwargs):
        srv = ScriptedServer(responder, **kwargs).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
