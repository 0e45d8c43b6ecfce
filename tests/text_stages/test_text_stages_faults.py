"""20% injected faults: the run completes and every dropped item is counted under its reason."""

from collections import Counter

from text_stage_helpers import small_config, artifacts
from scripted_server import PersistentFaults, ScriptedServer, first_of, transient_faults
from text_responder import TextStageResponder

from instructengine.text_pipeline import run_text_stages

# schema of a poisoned request -> (stage, drop-reason prefix it must be counted under)
WHERE = {
    "themes": ("taxonomy", "request:themes:"),
    "subtopics": ("taxonomy", "request:subtopics:"),
    "entities": ("entities", "request:entities:"),
    "confirm_entity": ("entities", "confirm:"),
    "contrast_pairs": ("pairs", "request:pairs:"),
}
# injected fault -> the client's drop reason once retries / re-asks are exhausted
REASON = {
    "http_500": "unavailable:http_500",
    "http_429": "unavailable:http_429",
    "malformed": "invalid_answer:not_json",
    "truncated": "invalid_answer:truncated",
}


def test_twenty_percent_faults_complete_and_count_every_drop(tmp_path):
    # 20% of the logical items fail on every attempt (-> dropped), and 20% of first attempts of
    # the others fail once or twice in recoverable ways (429 + Retry-After, 503, timeouts,
    # broken bodies, malformed or cut-off JSON)
    persistent = PersistentFaults(0.2, tuple(REASON), seed=1, only=("subtopics", "entities", "confirm_entity", "contrast_pairs"))
    transient = transient_faults(0.2, ("http_429", "http_503", "timeout", "badjson", "malformed", "truncated"), seed=2)
    with ScriptedServer(TextStageResponder(), faults=first_of(persistent, transient), timeout_sleep_s=0.6) as srv:
        cfg = small_config(tmp_path / "run", srv.base_url, llm={"timeout_s": 0.3, "max_retries": 3, "max_timeout_retries": 3, "max_invalid_retries": 1})
        manifests = run_text_stages(cfg)
        faults_seen = Counter(e["fault"] for e in srv.log if e["fault"])

    assert set(manifests) == {"taxonomy", "entities", "pairs"}
    assert all(m.finished_at for m in manifests.values())
    # every kind of fault was really injected, transient ones included
    for kind in ("http_429", "http_503", "timeout", "badjson", "malformed", "truncated", "http_500"):
        assert faults_seen[kind] > 0, kind

    expected: Counter = Counter()
    for schema, kind in persistent.poisoned.values():
        stage, prefix = WHERE[schema]
        expected[(stage, prefix + REASON[kind])] += 1
    assert sum(expected.values()) >= 10
    got: Counter = Counter()
    for stage, m in manifests.items():
        for reason, n in m.dropped.items():
            if reason.startswith(("request:", "confirm:")):
                got[(stage, reason)] += n
    assert got == expected  # each poisoned item counted once, under the reason of its fault

    # recoverable faults were retried, not dropped: a clean run differs only by the poisoned items
    usage = Counter()
    for m in manifests.values():
        usage.update(m.extra["llm_usage"]["retries"])
    assert usage["timeout"] > 0 and usage["http_429"] > 0 and usage["bad_response"] > 0
    # items and counts add up in every stage
    em = manifests["entities"].to_dict()["counts"]
    assert em["in"] == em["out"] + sum(n for r, n in em["dropped"].items() if not r.startswith("request:"))
    pm = manifests["pairs"].to_dict()["counts"]
    assert pm["in"] == pm["out"] + sum(n for r, n in pm["dropped"].items() if not r.startswith("request:"))
    assert len(artifacts(cfg.run_dir)["pairs"]) == pm["out"] > 0
