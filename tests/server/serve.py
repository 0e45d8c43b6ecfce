"""Run the scripted server as its own process: ``python tests/server/serve.py --latency 0.2``.

Prints ``PORT <n>`` once it listens on 127.0.0.1, then serves until terminated. Every request is
answered ``{"items": ["a", "b"]}`` after ``--latency`` seconds; ``--fault-rate`` of the attempts
get ``--fault`` instead (a 429 carries ``Retry-After: --retry-after``). Used by
:class:`scripted_server.SubprocessServer` (tests, benchmarks/llm_concurrency.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted_server import ScriptedServer, random_faults  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault", default="http_429")
    p.add_argument("--retry-after", default="0.1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    faults = random_faults(args.fault_rate, args.fault, args.seed) if args.fault_rate > 0 else None
    srv = ScriptedServer(lambda body: {"items": ["a", "b"]}, latency_s=args.latency, faults=faults, retry_after=args.retry_after)
    srv.start()
    print(f"PORT {srv.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
