"""The three LLM text stages (taxonomy -> entities -> instructions) at concurrency 1 vs C, and a re-run.

``instructengine.text_pipeline.run_text_stages`` on the same small but complete config (the one of the
text-stage tests, ~140 requests), against the scripted OpenAI-compatible server of ``tests/server``
with a fixed latency per request, each run in a fresh run folder:

* ``concurrency_1``  -- ``llm.concurrency=1``;
* ``concurrency_C``  -- ``llm.concurrency=C`` (default 32);
* ``cached_rerun``   -- the ``concurrency_C`` run again in its own folder: every stage is complete, so
                        it must make 0 requests;
* ``cache_only``     -- the same after deleting the stages' progress ledgers: the request cache alone
                        must answer everything (0 requests).

Artifacts of all runs must be identical (the server's answers are deterministic). Server-side request
counts are what the server saw, not what the client believes.

    python benchmarks/llm_stages.py                 # 50 ms per request, C = 32
    python benchmarks/llm_stages.py --tiny --out /tmp/llm.json

The raw client's throughput and rate-limit handling on 1,000 requests: ``benchmarks/llm_concurrency.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
for sub in ("server", "text_stages", "llm"):
    sys.path.insert(0, str(ROOT / "tests" / sub))
from _common import finish, machine, table  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tiny", action="store_true", help="CI size: 5 ms per request")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:
        args.latency = 0.005

    from scripted_server import ScriptedServer
    from text_responder import TextStageResponder
    from text_stage_helpers import artifacts, assert_same_artifacts, small_config

    from instructengine.text_pipeline import run_text_stages

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    rows: list[dict[str, Any]] = []
    with ScriptedServer(TextStageResponder(), latency_s=args.latency) as srv:
        def run(name: str, run_dir: Path, concurrency: int) -> dict[str, Any]:
            cfg = small_config(run_dir, srv.base_url, llm={"concurrency": concurrency})
            before = srv.total
            srv.max_in_flight = 0
            t0 = time.perf_counter()
            manifests = run_text_stages(cfg)
            seconds = time.perf_counter() - t0
            row = {"run": name, "concurrency": concurrency, "seconds": round(seconds, 3),
                   "server_requests": srv.total - before, "peak_in_flight": srv.max_in_flight,
                   "cache_hits": sum(m.extra.get("llm_usage", {}).get("cache_hits", 0) for m in manifests.values()),
                   "stage_s": {k: m.to_dict().get("timings_s", {}) for k, m in manifests.items()}}
            rows.append(row)
            return row

        serial = run("concurrency_1", root / "c1", 1)
        parallel = run(f"concurrency_{args.concurrency}", root / "cC", args.concurrency)
        first = artifacts(root / "cC")
        run("cached_rerun", root / "cC", args.concurrency)
        for ledger in (root / "cC").glob("*/progress-*.jsonl"):
            ledger.unlink()
        run("cache_only", root / "cC", args.concurrency)
        assert_same_artifacts(first, artifacts(root / "cC"))
        assert_same_artifacts(first, artifacts(root / "c1"))
    tmp.cleanup()
    for r in rows:
        r["speed_vs_concurrency_1"] = round(serial["seconds"] / r["seconds"], 2) if r["seconds"] > 0 else None
    result = {"benchmark": "llm_stages", "latency_s": args.latency, "concurrency": args.concurrency,
              "requests_per_full_run": serial["server_requests"], "runs": rows,
              "speedup": round(serial["seconds"] / parallel["seconds"], 2),
              "rerun_requests": rows[2]["server_requests"], "cache_only_requests": rows[3]["server_requests"],
              "machine": machine()}
    text = table(f"Text stages, {serial['server_requests']} requests of {args.latency * 1000:.0f} ms", rows,
                 ["run", "concurrency", "seconds", "server_requests", "peak_in_flight", "cache_hits",
                  "speed_vs_concurrency_1"])
    return finish(result, args.out, text, args.quiet)


if __name__ == "__main__":
    main()
