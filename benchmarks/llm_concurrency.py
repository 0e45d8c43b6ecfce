"""How much bounded concurrency speeds up LLM calls: N requests against the local scripted server
(fixed latency per request) at concurrency C versus concurrency 1.

    python benchmarks/llm_concurrency.py                  # 1,000 requests, 200 ms, C=32; C=1 on 100 requests
    python benchmarks/llm_concurrency.py --serial-requests 1000   # C=1 on all 1,000 too (~3.5 minutes)

By default the concurrency-1 run measures ``--serial-requests`` requests and extrapolates linearly
to N (it is a chain of identical sequential requests); the output says which numbers are measured
and which extrapolated. The server (FastAPI + uvicorn) runs in a thread of this process, so its
CPU time counts against the client's: the measured speed-up is a lower bound of what a remote
server gives. Requests are distinct and the cache is off, so every request reaches the server.
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
from scripted_server import ScriptedServer  # noqa: E402

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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--serial-requests", type=int, default=100, help="requests measured at concurrency 1 (then extrapolated to --requests)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)

    with ScriptedServer(lambda body: {"items": ["a", "b"]}, latency_s=args.latency) as srv:
        asyncio.run(timed_batch(srv.base_url, 4, 4, offset=-10))  # warm-up: imports, first connections
        parallel_s, usage = asyncio.run(timed_batch(srv.base_url, args.requests, args.concurrency, offset=0))
        peak = srv.max_in_flight
        serial_n = min(args.serial_requests, args.requests)
        serial_s, _ = asyncio.run(timed_batch(srv.base_url, serial_n, 1, offset=10**6))
    serial_total = serial_s * args.requests / serial_n
    result = {
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
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
