"""API tests against a real server on 127.0.0.1 (uvicorn in a thread)."""

import csv
import io
import json
import os
import re

import httpx
import pytest

from instructengine.humaneval.server import background_server
from instructengine.humaneval.study import create_study

from .evaldirs import build_eval_run, current_task, review_config

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)> =HYPERLINK("http://e")'


@pytest.fixture
def served(tmp_path):
    runs = [
        build_eval_run(tmp_path, "instructengine", n_prompts=4, style=0, prompts=[EVIL, "a cat", "a dog", "a red cube"]),
        build_eval_run(tmp_path, "baseline", n_prompts=4, style=1, prompts=[EVIL, "a cat", "a dog", "a red cube"]),
    ]
    # INSTRUCTENGINE_REVIEW_DATABASE_URL runs these tests on another database (e.g. PostgreSQL)
    url = os.environ.get("INSTRUCTENGINE_REVIEW_DATABASE_URL", "")
    cfg = review_config(tmp_path, runs, "study.annotators=[ann1,ann2,ann3]", "study.annotators_per_item=3",
                        "study.protocol=custom", "study.criteria=[consistency,aesthetics,realism]",
                        f"study.name=api-{tmp_path.name}", f"database_url={url}")
    made = create_study(cfg)
    with background_server(made.database_url) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client, made, runs


def pixel_key(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


def ann(made, name="ann1"):
    return f"/api/a/{made.annotator_tokens[name]}"


def adm(made):
    return f"/api/admin/{made.admin_token}"


def shown(client, made, name="ann1"):
    """The annotator's current task, with both images fetched as the page does (votes need both)."""
    return current_task(client, made.annotator_tokens[name])


def full_vote(task_id, choice="left"):
    return {"task_id": task_id, "choice": choice,
            "criteria": {"consistency": choice, "aesthetics": "tie", "realism": "both_bad"}}


def test_state_is_blind_and_resumable(served):
    client, made, runs = served
    st = client.get(f"{ann(made)}/state").json()
    assert st["progress"] == {"done": 0, "total": 4}
    assert st["criteria"] == ["consistency", "aesthetics", "realism"]
    assert st["choices"] == ["left", "right", "tie", "both_bad"]
    assert st["task"]["position"] == 0 and st["last_vote_task_id"] is None
    text = json.dumps(st)
    for secret in ("instructengine", "baseline", str(runs[0]), ".png", "system"):
        assert secret not in text  # no hint of the source
    first = shown(client, made)["id"]
    assert first == st["task"]["id"]
    assert client.post(f"{ann(made)}/votes", json=full_vote(first)).json()["status"] == "recorded"
    st2 = client.get(f"{ann(made)}/state").json()
    assert st2["progress"]["done"] == 1 and st2["task"]["position"] == 1 and st2["last_vote_task_id"] == first


def test_images_come_from_registered_files_and_sides_are_stored(served):
    client, made, runs = served
    st = client.get(f"{ann(made)}/state").json()
    left = client.get(st["task"]["left"])
    right = client.get(st["task"]["right"])
    assert left.status_code == right.status_code == 200 and left.headers["content-type"] == "image/png"
    # served images are metadata-free copies of the pixels: identify them by their pixels
    files = {pixel_key(p.read_bytes()): p for r in runs for p in (r / "images").glob("*.png")}
    lp, rp = files[pixel_key(left.content)], files[pixel_key(right.content)]
    assert lp.name == rp.name  # same prompt and seed
    assert {lp.parts[-4], rp.parts[-4]} == {"instructengine", "baseline"}
    # the same request gives the same side again (assignment stored, not re-drawn)
    assert client.get(st["task"]["left"]).content == left.content
    # no request path reaches the disk
    tok = made.annotator_tokens["ann1"]
    for path in (f"/api/a/{tok}/tasks/{st['task']['id']}/..%2F..%2Fetc%2Fpasswd",
                 f"/api/a/{tok}/tasks/{st['task']['id']}/middle",
                 "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd"):
        r = client.get(path)
        assert r.status_code in (404, 422) and b"root:" not in r.content


def test_votes_validated_idempotent_and_conflicting(served):
    client, made, _ = served
    tid = shown(client, made)["id"]
    url = f"{ann(made)}/votes"
    bad = client.post(url, json={**full_vote(tid), "choice": "middle"})
    assert bad.status_code == 422 and "left" in bad.text
    miss = client.post(url, json={"task_id": tid, "choice": "left", "criteria": {"consistency": "left"}})
    assert miss.status_code == 422 and "missing ['aesthetics', 'realism']" in miss.text
    extra = client.post(url, json={**full_vote(tid), "criteria": {**full_vote(tid)["criteria"], "humor": "left"}})
    assert extra.status_code == 422 and "unknown ['humor']" in extra.text
    assert client.post(url, json=full_vote(999999)).status_code == 404
    first = client.post(url, json=full_vote(tid))
    again = client.post(url, json=full_vote(tid))
    assert first.json()["status"] == "recorded" and again.json()["status"] == "duplicate"
    assert again.json()["vote_id"] == first.json()["vote_id"]
    assert client.post(url, json=full_vote(tid, "right")).status_code == 409
    rows = client.get(f"{adm(made)}/votes.json").json()
    assert len(rows) == 1 and rows[0]["task_id"] == tid


def test_annotators_are_isolated(served):
    client, made, _ = served
    t1 = shown(client, made, "ann1")
    t2 = shown(client, made, "ann2")
    assert t1["id"] != t2["id"]
    assert client.post(f"{ann(made, 'ann2')}/votes", json=full_vote(t2["id"])).status_code == 200
    a1 = ann(made, "ann1")
    # ann1 cannot read, vote on, undo, or flag ann2's task
    assert client.get(f"{a1}/tasks/{t2['id']}/left").status_code == 404
    assert client.post(f"{a1}/votes", json=full_vote(t2["id"], "right")).status_code == 404
    assert client.post(f"{a1}/undo", json={"task_id": t2["id"]}).status_code == 404
    assert client.post(f"{a1}/flags", json={"task_id": t2["id"], "side": "left", "reason": "unsafe"}).status_code == 404
    # nor reach the admin view; and the admin token is not an annotator token
    tok1 = made.annotator_tokens["ann1"]
    for path in (f"/api/admin/{tok1}/results", f"/api/admin/{tok1}/votes.csv", f"/admin/{tok1}"):
        assert client.get(path).status_code == 404
    assert client.get(f"/api/a/{made.admin_token}/state").status_code == 404
    assert client.get("/api/a/not-a-token/state").status_code == 404
    assert client.get("/a/not-a-token").status_code == 404
    assert client.get(f"/a/{tok1}").status_code == 200
    assert client.get(f"/admin/{made.admin_token}").status_code == 200
    # ann2's vote is unchanged
    rows = client.get(f"{adm(made)}/votes.json").json()
    assert [(r["annotator"], r["choice"]) for r in rows] == [("ann2", "left")]


def test_undo_only_the_latest_vote(served):
    client, made, _ = served
    a = ann(made)
    ids = []
    for choice in ("left", "right"):
        tid = shown(client, made)["id"]
        client.post(f"{a}/votes", json=full_vote(tid, choice)).raise_for_status()
        ids.append(tid)
    assert client.post(f"{a}/undo", json={"task_id": ids[0]}).status_code == 409
    assert client.post(f"{a}/undo", json={"task_id": ids[1]}).json()["status"] == "undone"
    assert client.post(f"{a}/undo", json={"task_id": ids[1]}).json()["status"] == "not_voted"  # repeat is harmless
    st = client.get(f"{a}/state").json()
    assert st["task"]["id"] == ids[1] and st["progress"]["done"] == 1 and st["last_vote_task_id"] == ids[0]
    assert shown(client, made)["id"] == ids[1]
    client.post(f"{a}/votes", json=full_vote(ids[1], "tie")).raise_for_status()  # re-vote after undo
    active = client.get(f"{adm(made)}/votes.json").json()
    everything = client.get(f"{adm(made)}/votes.json?include_undone=true").json()
    assert [r["choice"] for r in active] == ["left", "tie"]
    assert sorted((r["status"], r["choice"]) for r in everything) == [("active", "left"), ("active", "tie"), ("undone", "right")]


def test_flags_are_recorded_once_and_shown_to_admin(served):
    client, made, _ = served
    a = ann(made)
    tid = shown(client, made)["id"]
    body = {"task_id": tid, "side": "right", "reason": "unsafe", "note": "<b>bad</b>"}
    assert client.post(f"{a}/flags", json=body).json()["status"] == "recorded"
    assert client.post(f"{a}/flags", json=body).json()["status"] == "duplicate"
    assert client.post(f"{a}/flags", json={**body, "reason": "nsfw"}).status_code == 422
    flags = client.get(f"{adm(made)}/results").json()["flags"]
    assert len(flags) == 1 and flags[0]["note"] == "<b>bad</b>" and flags[0]["system"] in ("instructengine", "baseline")


def test_admin_results_map_sides_to_systems(served):
    client, made, runs = served
    # every annotator always picks the image of "instructengine" (identified by its file bytes)
    ie_pixels = {pixel_key(p.read_bytes()) for p in (runs[0] / "images").glob("*.png")}
    for name in ("ann1", "ann2", "ann3"):
        a = ann(made, name)
        while (task := shown(client, made, name)) is not None:
            side = "left" if pixel_key(client.get(task["left"]).content) in ie_pixels else "right"
            client.post(f"{a}/votes", json=full_vote(task["id"], side)).raise_for_status()
    res = client.get(f"{adm(made)}/results").json()
    assert res["n_votes"] == 12 and res["n_tasks"] == 12
    (pair,) = res["criteria"]["overall"]["pairs"]
    assert (pair["system_a"], pair["system_b"]) == ("instructengine", "baseline")
    assert (pair["wins"], pair["losses"], pair["ties"], pair["win_rate"]) == (12, 0, 0, 1.0)
    assert res["criteria"]["aesthetics"]["pairs"][0]["ties"] == 12
    assert res["criteria"]["realism"]["pairs"][0]["both_bad"] == 12
    assert res["criteria"]["overall"]["bradley_terry"] is None  # two systems only
    assert res["criteria"]["overall"]["agreement"]["units"] == 4
    assert [p["done"] for p in res["progress"]] == [4, 4, 4]
    chart = client.get(f"{adm(made)}/chart.png")
    assert chart.status_code == 200 and chart.content[:8] == b"\x89PNG\r\n\x1a\n"
    # vote log export: both formats, side assignment and choice, CSV formula cells neutralised
    text = client.get(f"{adm(made)}/votes.csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 12
    assert {"annotator", "task_id", "left_system", "right_system", "choice", "created_at",
            "criterion_consistency"} <= set(rows[0])
    assert all(r["winner"] == "instructengine" for r in rows)
    assert all((r["choice"] == "left") == (r["left_system"] == "instructengine") for r in rows)
    evil = [r for r in rows if r["prompt_index"] == "0"]
    assert evil and all(r["prompt"] == EVIL for r in evil)  # starts with '<', kept as is
    js = client.get(f"{adm(made)}/votes.json").json()
    assert len(js) == 12 and {r["prompt"] for r in js} >= {EVIL}


def test_security_headers_and_escaping(served):
    client, made, _ = served
    page = client.get(f"/a/{made.annotator_tokens['ann1']}")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    sinks = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|eval\(")
    for js in ("annotate.js", "admin.js"):
        code = client.get(f"/static/{js}").text
        assert "textContent" in code and not sinks.search(code), js
    # the prompt is returned as data (JSON) and never pasted into HTML by the server
    assert EVIL not in page.text


def test_concurrent_identical_submissions_store_one_vote(served):
    from concurrent.futures import ThreadPoolExecutor

    client, made, _ = served
    a = ann(made)
    tid = shown(client, made)["id"]
    base = str(client.base_url)

    def send(_):
        with httpx.Client(base_url=base, timeout=30) as c:
            return c.post(f"{a}/votes", json=full_vote(tid, "right")).json()["status"]

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(16)))
    assert sorted(set(statuses)) == ["duplicate", "recorded"] and statuses.count("recorded") == 1
    assert len(client.get(f"{adm(made)}/votes.json").json()) == 1
