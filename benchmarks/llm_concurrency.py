"""How much bounded concurrency speeds up LLM calls, and what rate limits cost: N requests against
the scripted server running as its own process on 127.0.0.1 (tests/server/serve.py; fixed latency
per request), at concurrency C versus concurrency 1, and at concurrency C with a share of the
attempts answered 429 + Retry-After.

    python benchmarks/llm_concurrency.py      # 1,000 requests, 200 ms, C=32; C=1 on 100; 30% 429 "Retry-After: 0.1"

The concurrency-1 run measures ``--serial-requests`` requests and extrapolates linearly to N (a
chain of identical sequential requests); the output says which numbers are measured. Requests are
distinct and the cache is off, so every request reaches the server. A 429 is answered after the
same latency as an answer (a pessimistic server), so with a 429 share r the best a client can do
is (1 - r) of the fault-free throughput (1 / (1 - r) attempts per request); ``rate_limit_ratio``
is the measured share. ``--in-process`` runs the server in a thread of this process instead (its
CPU time then counts against the client's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))

from pydantic import BaseModel  # noqa: E402
from scripted_server import ScriptedServer, SubprocessServer, random_faults  # noqa: E402

from instructengine.llm.client import ChatClient  # noqa: E402
from instructengine.llm.config import LLMConfig  # noqa: E402
from instructengine.llm.messages import user_message  # noqa: E402


class Answer(BaseModel):
    items: list[str]


async def timed_batch(base_url: str, n: int, concurrency: int, offset: int) -> tuple[float, dict]:
    cfg = LLMConfig(base_url=base_url, model="bench", api_key_env="IE_BENCH_NO_KEY", cache=False, concurrency=concurrency)
    async with ChatClient(cfg) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client.complete_json([user_message(f"request {offset + i}")], Answer) for i in range(n)))
        return time.perf_counter() - t0, client.usage.snapshot()


def _server(args: argparse.Namespace, fault_rate: float):
    if args.in_process:
        faults = random_faults(fault_rate, "http_429", seed=1) if fault_rate else None
        return ScriptedServer(lambda body: {"items": ["a", "b"]}, latency_s=args.latency, faults=faults, retry_after=args.retry_after)
    return SubprocessServer(latency_s=args.latency, fault_rate=fault_rate, retry_after=args.retry_after, seed=1)


def _peak(srv) -> int:
    return srv.max_in_flight if isinstance(srv, ScriptedServer) else srv.stats()["max_in_flight"]


def _reset(srv) -> None:
    srv.reset_counts() if isinstance(srv, ScriptedServer) else srv.reset()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--serial-requests", type=int, default=100, help="requests measured at concurrency 1 (then extrapolated to --requests)")
    p.add_argument("--rate-limit-share", type=float, default=0.3, help="share of attempts answered 429 (0: skip that run)")
    p.add_argument("--retry-after", default="0.1", help="the 429's Retry-After header")
    p.add_argument("--in-process", action="store_true", help="server in a thread of this process (not a subprocess)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    p.add_argument("--tiny", action="store_true", help="CI size: 64 requests of 20 ms, 16 at concurrency 1")
    args = p.parse_args(argv)
    if args.tiny:
        args.requests, args.latency, args.serial_requests = 64, 0.02, 16

    with _server(args, 0.0) as srv:
        asyncio.run(timed_batch(srv.base_url, 4, 4, offset=-10))  # warm-up: imports, first connections
        _reset(srv)
        parallel_s, usage = asyncio.run(timed_batch(srv.base_url, args.requests, args.concurrency, offset=0))
        peak = _peak(srv)
        serial_n = min(args.serial_requests, args.requests)
        serial_s, _ = asyncio.run(timed_batch(srv.base_url, serial_n, 1, offset=10**6))
    serial_total = serial_s * args.requests / serial_n
    result = {
        "server": "thread of this process" if args.in_process else "subprocess on 127.0.0.1",
        "requests": args.requests,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "parallel_seconds_measured": round(parallel_s, 3),
        "parallel_requests_per_s": round(args.requests / parallel_s, 1),
        "server_peak_in_flight": peak,
        "serial_requests_measured": serial_n,
        "serial_seconds_measured": round(serial_s, 3),
        "serial_seconds_for_all": round(serial_total, 3),
        "serial_extrapolated": serial_n < args.requests,
        "speedup": round(serial_total / parallel_s, 2),
        "ideal_speedup": args.concurrency,
        "http_requests": usage["http_requests"],
    }
    if args.rate_limit_share > 0:
        with _server(args, args.rate_limit_share) as srv:
            asyncio.run(timed_batch(srv.base_url, 4, 4, offset=-20))
            _reset(srv)
            limited_s, lusage = asyncio.run(timed_batch(srv.base_url, args.requests, args.concurrency, offset=2 * 10**6))
            lpeak = _peak(srv)
        result.update(
            rate_limited_share=args.rate_limit_share,
            rate_limited_retry_after=args.retry_after,
            rate_limited_seconds=round(limited_s, 3),
            rate_limited_requests_per_s=round(args.requests / limited_s, 1),
            rate_limited_http_requests=lusage["http_requests"],
            rate_limited_429s=lusage["retries"].get("http_429", 0),
            rate_limited_dropped=lusage["dropped"],
            rate_limited_peak_in_flight=lpeak,
            rate_limit_ratio=round(parallel_s / limited_s, 3),
            rate_limit_ratio_best_possible=round(1 - args.rate_limit_share, 3),
        )
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
