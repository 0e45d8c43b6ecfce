"""Load test of the review app on loopback: N concurrent annotators x M votes each.

Builds a throw-away study (2 systems, tiny PNGs), starts ``instructengine review serve`` in a
separate process (a real uvicorn server on 127.0.0.1), and runs every annotator as its own
client (own connection) that repeatedly fetches its next task and both its images (the app
takes a vote only for the task served, once its images were fetched) and votes on it, re-sending a
share of its votes (as a flaky network would) to check idempotency. Then it reads the database
and checks that every vote is persisted exactly once, with the choice the client sent.

    python benchmarks/review_load.py                       # 20 annotators x 50 votes (the issue's test)
    python benchmarks/review_load.py --annotators 4 --votes 10 --json out.json

Prints a JSON report (latency percentiles of the vote POSTs, throughput, the checks) and exits
non-zero when a vote was lost, doubled or altered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _build_runs(root: Path, n_prompts: int) -> list[Path]:
    import pandas as pd
    from PIL import Image

    runs = []
    for k, model in enumerate(["system-a", "system-b"]):
        bench = root / "eval" / model / "loadbench"
        (bench / "images").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"prompt_index": range(n_prompts), "prompt": [f"prompt number {i}" for i in range(n_prompts)],
                      "category": ["load"] * n_prompts}).to_parquet(bench / "prompts.parquet")
        rows = []
        for i in range(n_prompts):
            Image.new("RGB", (64, 64), ((37 * i) % 256, 80 + 60 * k, 140)).save(bench / f"images/{i}_0.png")
            rows.append({"prompt_index": i, "seed": 0, "path": f"images/{i}_0.png"})
        pd.DataFrame(rows).to_parquet(bench / "images.parquet")
        (bench / "generation.json").write_text(json.dumps({"model": model}))
        runs.append(bench)
    return runs


def _layout(annotators: int, votes: int) -> tuple[int, int]:
    """(annotators per item, comparisons) so that every annotator gets exactly ``votes`` tasks."""
    total = annotators * votes
    per_item = next(r for r in range(min(annotators, 10), 0, -1) if total % r == 0)
    return per_item, total // per_item


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _annotator(base: str, token: str, criteria: list[str], dup_rate: float, seed: int, out: dict) -> None:
    import httpx

    rng = random.Random(seed)
    sent: dict[int, str] = {}
    vote_ms, state_ms, image_ms, errors, dup_acks = [], [], [], [], 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while True:
            t0 = time.perf_counter()
            r = await client.get(f"/api/a/{token}/state")
            state_ms.append(1000 * (time.perf_counter() - t0))
            if r.status_code != 200:
                errors.append(f"state {r.status_code}: {r.text[:200]}")
                break
            task = r.json()["task"]
            if task is None:
                break
            for side in ("left", "right"):  # as the page does: votes are taken once both images were fetched
                t0 = time.perf_counter()
                img = await client.get(task[side])
                image_ms.append(1000 * (time.perf_counter() - t0))
                if img.status_code != 200:
                    errors.append(f"image {img.status_code}: {img.text[:200]}")
            choice = rng.choice(["left", "right", "tie", "both_bad"])
            body = {"task_id": task["id"], "choice": choice, "criteria": {c: rng.choice(["left", "right"]) for c in criteria}}
            t0 = time.perf_counter()
            r = await client.post(f"/api/a/{token}/votes", json=body)
            vote_ms.append(1000 * (time.perf_counter() - t0))
            if r.status_code != 200 or r.json().get("status") != "recorded":
                errors.append(f"vote {r.status_code}: {r.text[:200]}")
                break
            sent[task["id"]] = choice
            if rng.random() < dup_rate:  # the same vote again: must be acknowledged, not stored twice
                t0 = time.perf_counter()
                r = await client.post(f"/api/a/{token}/votes", json=body)
                vote_ms.append(1000 * (time.perf_counter() - t0))
                if r.status_code == 200 and r.json().get("status") == "duplicate":
                    dup_acks += 1
                else:
                    errors.append(f"duplicate {r.status_code}: {r.text[:200]}")
    out[token] = {"sent": sent, "vote_ms": vote_ms, "state_ms": state_ms, "image_ms": image_ms, "errors": errors,
                  "dup_acks": dup_acks}


async def _drive(base: str, tokens: list[str], criteria: list[str], dup_rate: float) -> tuple[dict, float]:
    out: dict = {}
    t0 = time.perf_counter()
    await asyncio.gather(*(_annotator(base, t, criteria, dup_rate, i, out) for i, t in enumerate(tokens)))
    return out, time.perf_counter() - t0


def _wait_up(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base} did not answer within {timeout}s")


def run_load(annotators: int = 20, votes: int = 50, dup_rate: float = 0.1, work_dir: str | None = None,
             database_url: str = "") -> dict:
    """Run the load test; returns the report dict (``report["ok"]`` tells whether all checks held)."""
    from sqlalchemy import func, select

    from instructengine.config import load_config
    from instructengine.humaneval import db
    from instructengine.humaneval.config import ReviewConfig
    from instructengine.humaneval.server import free_port
    from instructengine.humaneval.study import create_study

    tmp = tempfile.TemporaryDirectory(prefix="review-load-") if work_dir is None else None
    root = Path(work_dir or tmp.name)
    per_item, n_comparisons = _layout(annotators, votes)
    runs = _build_runs(root, n_comparisons)  # 2 systems -> one comparison per prompt
    port = free_port()
    overrides = [f"study_dir={root / 'study'}", f"database_url={database_url}", f"server.port={port}",
                 "study.runs=[" + ",".join(map(str, runs)) + "]",
                 "study.annotators=[" + ",".join(f"load-{i:03d}" for i in range(annotators)) + "]",
                 f"study.annotators_per_item={per_item}", "study.protocol=custom",
                 "study.criteria=[consistency,aesthetics,realism]", f"study.name=load-test-{time.strftime('%Y%m%d-%H%M%S')}-{port}"]
    cfg = load_config(ReviewConfig, None, overrides)
    made = create_study(cfg)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "instructengine.humaneval.cli", "serve", *overrides],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base, proc)
        tokens = list(made.annotator_tokens.values())
        out, wall = asyncio.run(_drive(base, tokens, cfg.study.resolved_criteria(), dup_rate))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    engine = db.make_engine(made.database_url)
    reader, _ = db.make_sessions(engine)
    with reader() as s:
        # only this study's votes (a shared database may hold other studies)
        in_study = db.Vote.annotator_id.in_(select(db.Annotator.id).join(db.Study).where(db.Study.name == made.name))
        persisted = s.scalar(select(func.count(db.Vote.id)).where(in_study))
        unique_tasks = s.scalar(select(func.count(func.distinct(db.Vote.task_id))).where(in_study))
        stored = dict(s.execute(select(db.Vote.task_id, db.Vote.choice).where(in_study)).all())
        per_annotator = list(dict(s.execute(
            select(db.Vote.annotator_id, func.count(db.Vote.id)).where(in_study).group_by(db.Vote.annotator_id)
        ).all()).values())
    engine.dispose()
    sent = {tid: c for o in out.values() for tid, c in o["sent"].items()}
    vote_ms = [x for o in out.values() for x in o["vote_ms"]]
    state_ms = [x for o in out.values() for x in o["state_ms"]]
    image_ms = [x for o in out.values() for x in o["image_ms"]]
    errors = [e for o in out.values() for e in o["errors"]]
    expected = annotators * votes
    report = {
        "annotators": annotators, "votes_per_annotator": votes, "expected_votes": expected,
        "votes_sent": len(sent), "duplicates_sent_and_acknowledged": sum(o["dup_acks"] for o in out.values()),
        "persisted": persisted, "unique_tasks_voted": unique_tasks,
        "lost": len(set(sent) - set(stored)), "doubled": persisted - unique_tasks,
        "altered": sum(1 for t, c in sent.items() if stored.get(t) not in (None, c)),
        "per_annotator_min_max": [min(per_annotator or [0]), max(per_annotator or [0])],
        "errors": errors[:10], "n_errors": len(errors),
        "vote_latency_ms": {
            "n": len(vote_ms), "p50": round(_percentile(vote_ms, 0.50), 2), "p95": round(_percentile(vote_ms, 0.95), 2),
            "p99": round(_percentile(vote_ms, 0.99), 2), "max": round(max(vote_ms), 2),
            "mean": round(statistics.fmean(vote_ms), 2),
        } if vote_ms else None,
        "state_latency_ms": {"p50": round(_percentile(state_ms, 0.5), 2), "p95": round(_percentile(state_ms, 0.95), 2)} if state_ms else None,
        "image_latency_ms": {"p50": round(_percentile(image_ms, 0.5), 2), "p95": round(_percentile(image_ms, 0.95), 2)} if image_ms else None,
        "wall_s": round(wall, 2), "votes_per_s": round(len(vote_ms) / wall, 1) if wall else None,
        "database": "sqlite (WAL)" if made.database_url.startswith("sqlite") else made.database_url.split(":")[0],
        "cpus": os.cpu_count(),
    }
    report["ok"] = (persisted == expected == len(sent) and report["lost"] == 0 and report["doubled"] == 0
                    and report["altered"] == 0 and not errors and report["per_annotator_min_max"] == [votes, votes])
    if tmp is not None:
        tmp.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", type=int, default=20, help="concurrent annotators (default 20)")
    p.add_argument("--votes", type=int, default=50, help="votes per annotator (default 50)")
    p.add_argument("--duplicate-rate", type=float, default=0.1, help="share of votes sent twice (default 0.1)")
    p.add_argument("--work-dir", default=None, help="keep the study here instead of a temporary folder")
    p.add_argument("--database-url", default="", help="SQLAlchemy URL (default: SQLite in WAL mode in the study folder)")
    p.add_argument("--json", default=None, help="also write the report to this file")
    a = p.parse_args(argv)
    report = run_load(a.annotators, a.votes, a.duplicate_rate, a.work_dir, a.database_url)
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
