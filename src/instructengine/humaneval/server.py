"""Run the review app: in the foreground (``review serve``) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from instructengine.humaneval.config import ResultsConfig, ServerConfig

__all__ = ["background_server", "free_port", "serve"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(database_url: str, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info",
          server: "ServerConfig | None" = None, results: "ResultsConfig | None" = None) -> None:
    """Serve the app until interrupted (blocking); ``server``/``results`` as in :func:`create_app`.

    The access log stays off: request paths hold the secret tokens.
    """
    import uvicorn

    from instructengine.humaneval.app import create_app

    uvicorn.run(create_app(database_url, server, results), host=host, port=port, log_level=log_level,
                access_log=False, server_header=False)


@contextlib.contextmanager
def background_server(database_url: str, host: str = "127.0.0.1", port: int | None = None,
                      timeout: float = 20.0, server: "ServerConfig | None" = None,
                      results: "ResultsConfig | None" = None) -> Iterator[str]:
    """Start the app on a real socket in a thread; yields its base URL; stops it on exit.

    Raises RuntimeError when the server does not start within ``timeout`` seconds.
    """
    import uvicorn

    from instructengine.humaneval.app import create_app

    port = port or free_port(host)
    app = create_app(database_url, server, results)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, name=f"review-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            uv.should_exit = True
            raise RuntimeError(f"review server on {host}:{port} did not start within {timeout}s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        app.state.engine.dispose()
