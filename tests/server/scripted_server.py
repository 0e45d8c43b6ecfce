"""A real OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks.

FastAPI app served by uvicorn in a background thread (its own event loop, so the server keeps
answering while the test's client runs). It serves scripted answers with optional latency and
fault injection, and counts every request:

* ``counts[request_key]`` - how often each distinct request body arrived;
* ``answered[request_key]`` - how often it got a 200 with a usable answer;
* ``item_counts[item_key]`` - per logical item (the first user message and the seed; re-asks
  after a bad answer share it);
* ``log`` - one dict per request (keys, schema name, fault, status).

Faults are decided by a function ``faults(body, nth) -> kind | None`` where ``nth`` is how many
times this exact body has been seen (1 for the first). Kinds: ``http_<status>`` (429 carries a
``Retry-After`` header), ``timeout`` (the answer is delayed by ``timeout_sleep_s``),
``malformed`` (prose instead of JSON), ``truncated`` (JSON cut in half, finish_reason=length),
``badjson`` (the HTTP body itself is cut off mid-JSON).

``GET /_stats`` returns the counters as JSON and ``POST /_reset`` clears them, so a server in
another process (:class:`SubprocessServer`, ``python tests/server/serve.py``) can be measured.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

Responder = Callable[[dict[str, Any]], Any]
FaultPlan = Callable[[dict[str, Any], int], "str | None"]


def request_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def first_user_text(body: dict[str, Any]) -> str:
    for msg in body.get("messages", []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def item_key(body: dict[str, Any]) -> str:
    """The logical item: first user message + seed (a re-ask after a bad answer keeps both)."""
    return hashlib.sha256(f"{first_user_text(body)}\x1f{body.get('seed')}".encode()).hexdigest()


def schema_name(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    return ((fmt.get("json_schema") or {}).get("name")) or ""


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from the parts."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def transient_faults(
    rate: float, kinds: tuple[str, ...] = ("http_429", "http_500", "malformed"), seed: int = 0, max_nth: int = 2
) -> FaultPlan:
    """The first ``max_nth`` attempts of a request each fail with probability ``rate``
    (deterministic in (request, nth)); later attempts and re-asks after a bad answer never do, so
    a client with enough retries always recovers."""

    def plan(body: dict[str, Any], nth: int) -> str | None:
        if nth > max_nth or body.get("messages", [{}])[-1].get("role") != "user" or len(body["messages"]) > 2:
            return None
        key = request_key(body)
        if _unit(seed, key, nth) < rate:
            return kinds[int(_unit(seed, key, nth, "kind") * len(kinds))]
        return None

    return plan


class PersistentFaults:
    """A fraction ``rate`` of logical items fails on every attempt with one kind each.

    ``poisoned`` maps the item keys that were hit to their kind; ``only`` restricts poisoning to
    requests with those schema names.
    """

    def __init__(self, rate: float, kinds: tuple[str, ...], seed: int = 0, only: tuple[str, ...] = ()):
        self.rate, self.kinds, self.seed, self.only = rate, kinds, seed, only
        self.poisoned: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def kind_for(self, body: dict[str, Any]) -> str | None:
        if self.only and schema_name(body) not in self.only:
            return None
        key = item_key(body)
        if _unit(self.seed, key) >= self.rate:
            return None
        return self.kinds[int(_unit(self.seed, key, "kind") * len(self.kinds))]

    def __call__(self, body: dict[str, Any], nth: int) -> str | None:
        kind = self.kind_for(body)
        if kind is not None:
            with self._lock:
                self.poisoned[item_key(body)] = (schema_name(body), kind)
        return kind


def random_faults(rate: float, kind: str = "http_429", seed: int = 0) -> FaultPlan:
    """Every attempt (retries included) fails with probability ``rate``, independently (seeded):
    the fault rate a client sees stays ``rate`` however often it retries."""
    import random

    rng = random.Random(seed)

    def plan(body: dict[str, Any], nth: int) -> str | None:
        return kind if rng.random() < rate else None

    return plan


def first_of(*plans: FaultPlan | None) -> FaultPlan:
    """The first plan that injects a fault wins."""

    def plan(body: dict[str, Any], nth: int) -> str | None:
        for p in plans:
            if p is not None:
                kind = p(body, nth)
                if kind:
                    return kind
        return None

    return plan


class ScriptedServer:
    """``with ScriptedServer(responder) as srv: ... srv.base_url ...``"""

    def __init__(
        self,
        responder: Responder,
        *,
        latency_s: float = 0.0,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        models: set[str] | None = None,
        retry_after: str | None = "0.05",
        timeout_sleep_s: float = 1.0,
        fault_headers: dict[str, str] | None = None,
    ):
        self.responder = responder
        self.latency_s = latency_s
        self.faults = faults
        self.api_key = api_key
        self.models = models
        self.retry_after = retry_after
        self.timeout_sleep_s = timeout_sleep_s
        self.fault_headers = dict(fault_headers or {})  # sent with every http_<status> fault
        self.counts: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.item_counts: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- counters -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def answered_by_schema(self) -> Counter[str]:
        with self._lock:
            return Counter(e["schema"] for e in self.log if e["status"] == 200 and e["fault"] is None)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.answered.clear()
            self.item_counts.clear()
            self.log.clear()
            self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- app ------------------------------------------------------------------------------------
    def _app(self) -> Any:
        app = FastAPI()

        def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
            return JSONResponse({"error": {"message": message, "type": "scripted", "code": status}}, status, headers)

        @app.get("/_stats")
        async def stats() -> Any:
            with self._lock:
                statuses = Counter(str(e["status"]) for e in self.log)
                return {"total": sum(self.counts.values()), "distinct": len(self.counts),
                        "max_in_flight": self.max_in_flight, "statuses": dict(statuses)}

        @app.post("/_reset")
        async def reset() -> Any:
            self.reset_counts()
            return {"ok": True}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return error(400, "request body is not JSON")
            rkey, ikey = request_key(body), item_key(body)
            with self._lock:
                self.counts[rkey] += 1
                self.item_counts[ikey] += 1
                nth = self.counts[rkey]
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            entry = {"key": rkey, "item": ikey, "schema": schema_name(body), "fault": None, "status": 200, "t": time.time()}
            try:
                if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                    entry["status"] = 401
                    return error(401, "Incorrect API key provided.")
                if not isinstance(body.get("messages"), list) or not body["messages"]:
                    entry["status"] = 400
                    return error(400, "'messages' must be a non-empty list")
                if self.models is not None and body.get("model") not in self.models:
                    entry["status"] = 404
                    return error(404, f"The model `{body.get('model')}` does not exist.")
                fault = self.faults(body, nth) if self.faults else None
                entry["fault"] = fault
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                if fault and fault.startswith("http_"):
                    status = int(fault[5:])
                    entry["status"] = status
                    headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after is not None else {}
                    headers.update(self.fault_headers)
                    return error(status, f"scripted {status}", headers or None)
                if fault == "timeout":
                    await asyncio.sleep(self.timeout_sleep_s)
                answer = self.responder(body)
                content = answer if isinstance(answer, str) else json.dumps(answer)
                finish = "stop"
                if fault == "malformed":
                    content = "Sure! Here is what you asked for: " + content.translate(str.maketrans("{}[]", "()()"))
                elif fault == "truncated":
                    content, finish = content[: max(1, len(content) // 2)], "length"
                envelope = {
                    "id": f"chatcmpl-{rkey[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                    "usage": {
                        "prompt_tokens": len(json.dumps(body["messages"])) // 4,
                        "completion_tokens": max(1, len(content) // 4),
                        "total_tokens": len(json.dumps(body["messages"])) // 4 + max(1, len(content) // 4),
                    },
                }
                text = json.dumps(envelope)
                if fault == "badjson":
                    return Response(text[: len(text) // 2], media_type="application/json")
                if fault is None:
                    with self._lock:
                        self.answered[rkey] += 1
                return Response(text, media_type="application/json")
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self.log.append(entry)

        return app

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "ScriptedServer":
        import uvicorn

        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off",
            timeout_keep_alive=30, backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="scripted-llm-server", daemon=True)
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("scripted server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SubprocessServer:
    """The scripted server in a child process on 127.0.0.1 (``tests/server/serve.py``), so its CPU
    time and event loop are not the client's: ``with SubprocessServer(latency_s=0.2) as srv``.

    Answers ``{"items": [...]}`` to every request; ``fault_rate``/``fault`` inject
    :func:`random_faults`. :meth:`stats` / :meth:`reset` read and clear its counters over HTTP.
    """

    def __init__(self, latency_s: float = 0.0, fault_rate: float = 0.0, fault: str = "http_429",
                 retry_after: str = "0.1", seed: int = 0):
        self.args = ["--latency", str(latency_s), "--fault-rate", str(fault_rate), "--fault", fault,
                     "--retry-after", retry_after, "--seed", str(seed)]
        self.proc: Any = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "SubprocessServer":
        import subprocess
        import sys
        from pathlib import Path

        script = Path(__file__).with_name("serve.py")
        self.proc = subprocess.Popen([sys.executable, str(script), *self.args], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"scripted server subprocess did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def stats(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=10).json()

    def reset(self) -> None:
        import httpx

        httpx.post(f"http://127.0.0.1:{self.port}/_reset", timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> "SubprocessServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
