"""OpenAI-compatible LLM/VLM access: async client with retries, pacing, JSON-schema answers and a
SQLite cache (:mod:`.client`), prompt templates as files (:mod:`.prompts`, ``prompts/*.jinja``),
and the instruction backend the text stages use (:mod:`.backend`).

Nothing heavy is imported here; ``from instructengine.llm.client import ChatClient``.
"""

__all__ = ["build_client"]


def build_client(cfg, run_dir=None):
    """A :class:`~instructengine.llm.client.ChatClient` for ``cfg`` with its SQLite cache (when
    ``cfg.cache``) at ``cfg.cache_path`` or ``<run_dir>/llm_cache.sqlite``."""
    from pathlib import Path

    from instructengine.llm.cache import ResponseCache
    from instructengine.llm.client import ChatClient

    cache = None
    if cfg.cache:
        if cfg.cache_path:
            path = Path(cfg.cache_path)
        elif run_dir is not None:
            path = Path(run_dir) / "llm_cache.sqlite"
        else:
            raise ValueError("llm.cache is on but neither llm.cache_path nor a run directory is given")
        cache = ResponseCache(path)
    return ChatClient(cfg, cache)
