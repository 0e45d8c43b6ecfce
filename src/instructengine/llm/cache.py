"""SQLite cache of valid answers, keyed by the full request.

The key is the SHA-256 of the canonical JSON of everything that determines an answer: the request
body (model, messages, sampling parameters, response_format, extra fields) plus the expected
schema. The base URL and the API key are not part of it (a key must never be stored; the model
name identifies the model). Only answers that passed validation are stored, so a re-run sends a
request again only for items that were never answered.

Each :meth:`ResponseCache.put` is its own committed transaction in WAL mode: an answer is on disk
before the caller sees it, so a process killed right after a request loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["ResponseCache", "request_key"]


def request_key(body: dict[str, Any], schema: dict[str, Any] | None) -> str:
    blob = json.dumps({"body": body, "schema": schema}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """``key -> (content, usage)`` in one SQLite file; safe to share between processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # committed = in the WAL; survives a killed process
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers ("
            " key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL,"
            " content TEXT NOT NULL, usage TEXT NOT NULL, created REAL NOT NULL)"
        )
        # one row per HTTP attempt, written before it is sent: what was paid survives a kill
        self._db.execute("CREATE TABLE IF NOT EXISTS attempts (key TEXT NOT NULL, tag TEXT NOT NULL, run TEXT NOT NULL, t REAL NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT content, usage FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"content": row[0], "usage": json.loads(row[1])}

    def put(self, key: str, model: str, request: dict[str, Any], content: str, usage: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, model, request, content, usage, created) VALUES (?, ?, ?, ?, ?, ?)",
            (key, model, json.dumps(request, sort_keys=True, ensure_ascii=False), content, json.dumps(usage), time.time()),
        )

    def record_attempt(self, key: str, tag: str, run: str) -> None:
        """Note one HTTP attempt of request ``key`` (``tag``: its schema name) by process run ``run``."""
        self._db.execute("INSERT INTO attempts (key, tag, run, t) VALUES (?, ?, ?, ?)", (key, tag, run, time.time()))

    def attempt_totals(self, tags: list[str]) -> dict[str, int]:
        """Over every run that used this cache, for requests with these tags: HTTP attempts,
        runs, and requests sent by more than one run (repeated after a kill or an outage)."""
        marks = ",".join("?" * len(tags))
        total, runs = self._db.execute(f"SELECT COUNT(*), COUNT(DISTINCT run) FROM attempts WHERE tag IN ({marks})", tags).fetchone()
        repeated = self._db.execute(
            f"SELECT COUNT(*) FROM (SELECT key FROM attempts WHERE tag IN ({marks}) GROUP BY key HAVING COUNT(DISTINCT run) > 1)", tags
        ).fetchone()[0]
        return {"http_requests": int(total), "runs": int(runs), "requests_repeated_across_runs": int(repeated)}

    def requests(self) -> list[dict[str, Any]]:
        """Every stored request body (for inspection and tests)."""
        return [json.loads(r[0]) for r in self._db.execute("SELECT request FROM answers ORDER BY created")]

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
