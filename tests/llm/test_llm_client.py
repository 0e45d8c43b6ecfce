"""The chat client against a real HTTP server on 127.0.0.1 (tests/server/scripted_server.py)."""

import asyncio
import time

import pytest
from pydantic import BaseModel, Field

from instructengine.llm import build_client
from instructengine.llm.client import ChatClient, parse_retry_after
from instructengine.llm.config import LLMConfig
from instructengine.llm.errors import InvalidAnswerError, LLMUnavailableError, PermanentLLMError
from instructengine.llm.messages import user_message


class Colours(BaseModel):
    colours: list[str] = Field(min_length=1)


def answer_colours(body):
    return {"colours": ["red", "green"]}


def fast_cfg(srv, **kw):
    base = dict(
        base_url=srv.base_url, model="test-model", api_key_env="IE_TEST_KEY_UNSET", cache=False,
        backoff_base_s=0.01, backoff_max_s=0.05, max_retries=3, timeout_s=5.0,
    )
    base.update(kw)
    return LLMConfig(**base)


def ask(client, text="list colours", **kw):
    return client.complete_json([user_message(text)], Colours, **kw)


def run(coro):
    return asyncio.run(coro)


async def with_client(cfg, fn, cache=None):
    async with ChatClient(cfg, cache) as client:
        return await fn(client), client


def test_answer_tokens_and_cost(start_server):
    srv = start_server(answer_colours)
    cfg = fast_cfg(srv, prices={"test-model": {"input_per_million": 2.0, "output_per_million": 10.0}})
    answer, client = run(with_client(cfg, ask))
    assert answer.colours == ["red", "green"]
    u = client.usage.snapshot()
    assert u["http_requests"] == 1 and u["answers"] == 1
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    expected = (u["prompt_tokens"] * 2.0 + u["completion_tokens"] * 10.0) / 1e6
    assert u["cost_usd"] == pytest.approx(expected, rel=1e-6)
    body = srv.log[0]
    assert body["schema"] == "Colours"  # the schema is stated in the request
    other = fast_cfg(srv, prices={"another-model": {"input_per_million": 1.0, "output_per_million": 1.0}})
    _, client = run(with_client(other, ask))
    assert client.usage.snapshot()["cost_usd"] is None  # unknown, not free


def test_429_honours_retry_after(start_server):
    srv = start_server(answer_colours, faults=lambda body, nth: "http_429" if nth == 1 else None, retry_after="0.4")
    t0 = time.perf_counter()
    answer, client = run(with_client(fast_cfg(srv), ask))
    elapsed = time.perf_counter() - t0
    assert answer.colours == ["red", "green"]
    assert elapsed >= 0.4  # backoff alone would be <= 0.05 s
    assert client.usage.retries["http_429"] == 1
    assert sum(srv.counts.values()) == 2


def test_retry_after_pauses_all_workers(start_server):
    # one 429 with Retry-After 0.5 s holds back the requests that start after it, not only its own retry
    srv = start_server(
        answer_colours, latency_s=0.05, retry_after="0.5",
        faults=lambda body, nth: "http_429" if "item 0" in str(body["messages"]) and nth == 1 else None,
    )

    async def many(client):
        return await asyncio.gather(*(ask(client, f"item {i}") for i in range(6)))

    run(with_client(fast_cfg(srv, concurrency=1), many))
    times = sorted(e["t"] for e in srv.log)
    first = times[0]
    later = [t for t in times[1:]]
    assert all(t - first >= 0.5 for t in later)


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    from email.utils import formatdate

    delta = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert 25 <= delta <= 31


@pytest.mark.parametrize("fault,cause", [("http_500", "http_500"), ("http_503", "http_503"), ("timeout", "timeout"), ("badjson", "bad_response")])
def test_transient_fault_then_success(start_server, fault, cause):
    srv = start_server(answer_colours, faults=lambda body, nth: fault if nth <= 2 else None, timeout_sleep_s=1.0)
    answer, client = run(with_client(fast_cfg(srv, timeout_s=0.3), ask))
    assert answer.colours == ["red", "green"]
    assert client.usage.retries[cause] == 2
    assert sum(srv.counts.values()) == 3


def test_exponential_backoff_with_jitter(start_server):
    srv = start_server(answer_colours, faults=lambda body, nth: "http_500")
    cfg = fast_cfg(srv, max_retries=4, backoff_base_s=0.1, backoff_max_s=10.0)
    with pytest.raises(LLMUnavailableError) as info:
        run(with_client(cfg, ask))
    assert info.value.reason == "unavailable:http_500"
    assert info.value.attempts == 5
    times = [e["t"] for e in srv.log]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 4
    for k, gap in enumerate(gaps):  # waits of at least half the doubling delay (load can only add)
        nominal = 0.1 * 2**k
        assert nominal / 2 - 0.02 <= gap <= nominal + 0.5, (k, gaps)


def test_backoff_jitter_stays_within_half_to_full_delay():
    client = ChatClient(LLMConfig(backoff_base_s=1.0, backoff_max_s=6.0, cache=False))
    for attempt, nominal in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 6.0)]:  # doubling, capped at 6
        delays = [client._backoff(attempt) for _ in range(300)]
        assert nominal / 2 <= min(delays) and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal / 4  # really random


def test_connection_refused_is_retried_then_dropped():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", cache=False, max_retries=2, backoff_base_s=0.01, api_key_env="IE_TEST_KEY_UNSET")
    with pytest.raises(LLMUnavailableError) as info:
        run(with_client(cfg, ask))
    assert info.value.reason == "unavailable:connection"


@pytest.mark.parametrize(
    "status,expected",
    [(400, "response_format"), (401, "IE_TEST_KEY"), (403, "IE_TEST_KEY"), (404, "test-model"), (422, "rejected")],
)
def test_permanent_errors_fail_fast(start_server, status, expected):
    srv = start_server(answer_colours, faults=lambda body, nth: f"http_{status}")
    t0 = time.perf_counter()
    with pytest.raises(PermanentLLMError) as info:
        run(with_client(fast_cfg(srv, max_retries=5, backoff_base_s=1.0, api_key_env="IE_TEST_KEY"), ask))
    assert time.perf_counter() - t0 < 1.0  # no backoff sleeps
    assert sum(srv.counts.values()) == 1
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value) and expected in str(info.value)
    assert "scripted" in str(info.value)  # the server's own message is shown


def test_wrong_key_and_unknown_model_from_server_checks(start_server, monkeypatch):
    srv = start_server(answer_colours, api_key="sk-right", models={"test-model"})
    monkeypatch.setenv("IE_TEST_KEY", "sk-wrong")
    with pytest.raises(PermanentLLMError, match="IE_TEST_KEY is set"):
        run(with_client(fast_cfg(srv, api_key_env="IE_TEST_KEY"), ask))
    monkeypatch.setenv("IE_TEST_KEY", "sk-right")
    with pytest.raises(PermanentLLMError, match="does not exist"):
        run(with_client(fast_cfg(srv, api_key_env="IE_TEST_KEY", model="no-such-model"), ask))
    answer, _ = run(with_client(fast_cfg(srv, api_key_env="IE_TEST_KEY"), ask))
    assert answer.colours


def test_malformed_answer_is_reasked_with_the_problem(start_server):
    srv = start_server(answer_colours, faults=lambda body, nth: "malformed" if len(body["messages"]) == 1 else None)
    answer, client = run(with_client(fast_cfg(srv), ask))
    assert answer.colours == ["red", "green"]
    assert client.usage.invalid_answers["not_json"] == 1
    second = srv.log[1]
    assert second["item"] == srv.log[0]["item"]  # same logical item, re-asked
    assert len(srv.log) == 2


@pytest.mark.parametrize(
    "fault,responder,kind",
    [
        ("malformed", answer_colours, "not_json"),
        ("truncated", answer_colours, "truncated"),
        (None, lambda body: {"colors": "red"}, "schema"),
        (None, lambda body: "", "empty"),
    ],
)
def test_invalid_answer_dropped_after_bounded_reasks(start_server, fault, responder, kind):
    srv = start_server(responder, faults=(lambda body, nth: fault) if fault else None)
    with pytest.raises(InvalidAnswerError) as info:
        run(with_client(fast_cfg(srv, max_invalid_retries=2), ask))
    assert info.value.reason == f"invalid_answer:{kind}"
    assert sum(srv.item_counts.values()) == 3  # 1 + 2 re-asks, then dropped
    assert len(srv.counts) == 3  # each re-ask carries the conversation so far


def test_cache_rerun_makes_zero_requests(start_server, tmp_path):
    srv = start_server(answer_colours)
    cfg = fast_cfg(srv, cache=True, cache_path=str(tmp_path / "cache.sqlite"))

    async def three(client):
        return [await ask(client, f"item {i}") for i in range(3)]

    async def go():
        async with build_client(cfg) as client:
            return await three(client), client.usage.snapshot()

    first, u1 = run(go())
    assert srv.total == 3 and u1["cache_hits"] == 0
    second, u2 = run(go())
    assert srv.total == 3  # nothing new reached the server
    assert u2["cache_hits"] == 3 and u2["http_requests"] == 0
    assert [a.colours for a in first] == [a.colours for a in second]
    # a different parameter is a different request
    cfg2 = cfg.model_copy(update={"temperature": 0.3})

    async def go2():
        async with build_client(cfg2) as client:
            return await ask(client, "item 0")

    run(go2())
    assert srv.total == 4


def test_invalid_answers_are_not_cached(start_server, tmp_path):
    srv = start_server(answer_colours, faults=lambda body, nth: "malformed")
    cfg = fast_cfg(srv, cache=True, cache_path=str(tmp_path / "c.sqlite"), max_invalid_retries=0)
    for _ in range(2):
        with pytest.raises(InvalidAnswerError):
            run(with_client(cfg, ask, cache=__import__("instructengine.llm.cache", fromlist=["x"]).ResponseCache(cfg.cache_path)))
    assert srv.total == 2


def test_api_key_is_sent_but_never_stored(start_server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-1234567890"
    monkeypatch.setenv("IE_TEST_KEY", secret)
    srv = start_server(answer_colours, api_key=secret)
    cfg = fast_cfg(srv, api_key_env="IE_TEST_KEY", cache=True, cache_path=str(tmp_path / "c.sqlite"))
    caplog.set_level("DEBUG")

    async def go():
        async with build_client(cfg) as client:
            await ask(client)
            return repr(client), client.describe(), client.usage.snapshot()

    text, desc, usage = run(go())
    assert srv.log[0]["status"] == 200  # the server accepted the key
    assert desc["api_key_present"] is True
    blobs = [text, str(desc), str(usage), cfg.model_dump_json(), caplog.text]
    blobs += [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir()]
    assert all(secret not in b for b in blobs)


def test_concurrency_is_bounded_and_used(start_server):
    srv = start_server(answer_colours, latency_s=0.1)

    async def many(client):
        return await asyncio.gather(*(ask(client, f"item {i}") for i in range(16)))

    t0 = time.perf_counter()
    run(with_client(fast_cfg(srv, concurrency=4), many))
    elapsed = time.perf_counter() - t0
    assert srv.max_in_flight == 4
    assert 0.4 <= elapsed < 1.2  # 16 requests / 4 at a time * 0.1 s


def test_requests_per_minute_spaces_starts(start_server):
    srv = start_server(answer_colours)

    async def many(client):
        return await asyncio.gather(*(ask(client, f"item {i}") for i in range(5)))

    t0 = time.perf_counter()
    run(with_client(fast_cfg(srv, concurrency=8, requests_per_minute=600), many))
    assert time.perf_counter() - t0 >= 4 * 0.1  # starts at 0, 0.1, ..., 0.4 s
    times = sorted(e["t"] for e in srv.log)
    assert all(b - a >= 0.05 for a, b in zip(times[1:], times[2:]))  # never a burst


def test_image_input_is_sent_inline(start_server, tmp_path):
    from PIL import Image

    seen = {}

    def responder(body):
        parts = body["messages"][0]["content"]
        seen["types"] = [p["type"] for p in parts]
        seen["url"] = parts[1]["image_url"]["url"]
        return {"colours": ["red"]}

    srv = start_server(responder)
    img = Image.new("RGB", (4, 4), (255, 0, 0))

    async def go(client):
        return await client.complete_json([user_message("what colour?", images=[img])], Colours)

    answer, _ = run(with_client(fast_cfg(srv), go))
    assert answer.colours == ["red"]
    assert seen["types"] == ["text", "image_url"]
    assert seen["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("mode,expected", [("json_schema", "json_schema"), ("json_object", "json_object"), ("none", None)])
def test_structured_output_modes(start_server, mode, expected):
    seen = []

    def responder(body):
        seen.append((body.get("response_format") or {}).get("type"))
        return '```json\n{"colours": ["red"]}\n```'  # fenced, as models without JSON mode answer

    srv = start_server(responder)
    answer, _ = run(with_client(fast_cfg(srv, structured_output=mode, extra_body={"top_k": 5}), ask))
    assert answer.colours == ["red"] and seen == [expected]
