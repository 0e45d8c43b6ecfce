"""The scripted server itself: a real HTTP endpoint that counts requests and injects faults."""

import httpx
from scripted_server import PersistentFaults, ScriptedServer, item_key, request_key, transient_faults


def body(text, seed=0):
    return {"model": "m", "messages": [{"role": "user", "content": text}], "seed": seed}


def test_counts_distinct_requests_and_scripts_faults():
    faults = lambda b, nth: {"a": "http_429", "b": "malformed", "c": "truncated"}.get(b["messages"][0]["content"]) if nth == 1 else None
    with ScriptedServer(lambda b: {"echo": b["messages"][0]["content"]}, faults=faults, retry_after="7") as srv:
        with httpx.Client(base_url=srv.base_url) as http:
            r = http.post("/chat/completions", json=body("a"))
            assert r.status_code == 429 and r.headers["retry-after"] == "7"
            r = http.post("/chat/completions", json=body("a"))
            assert r.json()["choices"][0]["message"]["content"] == '{"echo": "a"}'
            assert "{" not in http.post("/chat/completions", json=body("b")).json()["choices"][0]["message"]["content"]
            cut = http.post("/chat/completions", json=body("c")).json()["choices"][0]
            assert cut["finish_reason"] == "length" and cut["message"]["content"] == '{"echo'
            assert http.post("/chat/completions", json={"model": "m", "messages": []}).status_code == 400
        assert srv.counts[request_key(body("a"))] == 2
        assert srv.answered[request_key(body("a"))] == 1
        assert srv.total == 5


def test_fault_plans_are_deterministic():
    persistent = PersistentFaults(0.5, ("http_500",), seed=3)
    hits = [persistent(body(f"item {i}"), 1) for i in range(200)]
    assert 70 < sum(h is not None for h in hits) < 130
    assert hits == [persistent(body(f"item {i}"), 5) for i in range(200)]  # every attempt alike
    assert len(persistent.poisoned) == sum(h is not None for h in hits)
    transient = transient_faults(0.5, ("http_503",), max_nth=2)
    assert all(transient(body(f"item {i}"), 3) is None for i in range(50))  # third attempts always pass
    assert item_key(body("x", seed=1)) != item_key(body("x", seed=2))
