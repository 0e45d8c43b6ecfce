"""Text embedders (n-gram and a tiny CLIP built from configs) and the stage helpers in backends.py."""

import asyncio

import numpy as np
import pytest

from instructengine.backends import (
    DropItem,
    EmbedderConfig,
    NgramHashEmbedder,
    TextEmbedder,
    build_embedder,
    clean_name,
    greedy_merge,
    ledgered,
    normalize_text,
    run_bounded,
)
from instructengine.runs import Ledger


def test_ngram_embedder_is_normalised_deterministic_and_lexical():
    emb = NgramHashEmbedder()
    assert isinstance(emb, TextEmbedder)
    v = emb.embed(["Watercolour landscapes", "watercolor landscape", "quartz xylophone"])
    assert v.shape == (3, 512) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert v[0] @ v[1] > 0.75 > 0.2 > v[0] @ v[2]
    assert np.array_equal(v, NgramHashEmbedder().embed(["Watercolour landscapes", "watercolor landscape", "quartz xylophone"]))


def test_greedy_merge_keeps_earlier_names_and_respects_the_limit():
    names = ["farm animals", "Farm animal", "wild animals", "sea creatures", "wild animal", "insects"]
    kept, merged, left = greedy_merge(names, NgramHashEmbedder(), threshold=0.8, limit=3)
    assert kept == [0, 2, 3]
    assert merged == {1: 0, 4: 2}
    assert left == [5]


def test_clean_and_normalize_names():
    assert clean_name('  1. "Red  Fox". ') == "Red Fox"
    assert clean_name("- barn owl") == "barn owl"
    assert normalize_text("  Red\tFOX. ") == "red fox"


def test_run_bounded_limits_concurrency_and_raises_the_first_error():
    active = peak = 0
    done = []

    async def work(i):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        done.append(i)

    asyncio.run(run_bounded(range(20), work, limit=3))
    assert peak == 3 and sorted(done) == list(range(20))

    async def failing(i):
        await asyncio.sleep(0.001 * i)
        if i == 2:
            raise PermissionError("stop")

    with pytest.raises(PermissionError, match="stop"):
        asyncio.run(run_bounded(range(10), failing, limit=4))


def test_ledgered_records_done_and_dropped_and_skips_them(tmp_path):
    calls = []

    async def ok():
        calls.append("ok")
        return {"items": [1]}

    async def bad():
        calls.append("bad")
        raise DropItem("invalid_answer:schema", "detail")

    async def go(path, retry=False):
        with Ledger(path) as ledger:
            await ledgered(ledger, "a", ok)
            await ledgered(ledger, "b", bad, retry_dropped=retry)
            return ledger.records()

    recs = asyncio.run(go(tmp_path / "l.jsonl"))
    assert recs == [
        {"key": "a", "status": "done", "items": [1]},
        {"key": "b", "status": "dropped", "reason": "invalid_answer:schema", "detail": "detail"},
    ]
    asyncio.run(go(tmp_path / "l.jsonl"))
    assert calls == ["ok", "bad"]  # nothing redone
    asyncio.run(go(tmp_path / "l.jsonl", retry=True))
    assert calls == ["ok", "bad", "bad"]  # only the dropped item retried


def test_load_object_errors_are_clear():
    from instructengine.registry import load_object as load_target

    assert load_target("instructengine.backends:NgramHashEmbedder") is NgramHashEmbedder
    with pytest.raises(ValueError, match="not an import path"):
        load_target("instructengine.backends.NgramHashEmbedder")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        load_target("no_such_module:x")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        load_target("instructengine.backends:Nope")
    emb = build_embedder(EmbedderConfig(kind="instructengine.backends:NgramHashEmbedder", options={"dim": 64}))
    assert emb.embed(["x"]).shape == (1, 64)


@pytest.fixture(scope="module")
def torch_one_thread():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def test_tiny_clip_embedder_from_config(torch_one_thread):
    from tiny_clip import tiny_clip_embedder

    emb = tiny_clip_embedder(["red", "fox", "barn", "owl"])
    assert isinstance(emb, TextEmbedder)
    v = emb.embed(["red fox", "barn owl", "red fox", "an unknown word"] * 3)  # 3 batches of 4
    assert v.shape == (12, 16) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v[0], v[2], atol=1e-6) and not np.allclose(v[0], v[1])
    assert emb.embed([]).shape == (0, 16)


def test_clip_embedder_loads_a_saved_clip_checkpoint(torch_one_thread, tmp_path):
    from tiny_clip import tiny_clip_model, tiny_tokenizer

    from instructengine.backends import CLIPTextEmbedder

    tok = tiny_tokenizer(["red", "fox", "barn", "owl"])
    model = tiny_clip_model(tok)
    model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    emb = build_embedder(EmbedderConfig(kind="clip", model=str(tmp_path / "clip"), local_files_only=True, batch_size=2))
    assert emb.fingerprint == f"clip:{tmp_path / 'clip'}"
    texts = ["red fox", "barn owl", "owl"]
    loaded = emb.embed(texts)
    direct = CLIPTextEmbedder(model, tok).embed(texts)  # the full CLIPModel's get_text_features
    assert np.allclose(loaded, direct, atol=1e-5)


def test_clip_embedder_refuses_a_checkpoint_without_text_weights(torch_one_thread, tmp_path):
    from tiny_clip import tiny_clip_model, tiny_tokenizer
    from transformers import CLIPVisionModelWithProjection

    tok = tiny_tokenizer(["a"])
    full = tiny_clip_model(tok)
    vision = CLIPVisionModelWithProjection(full.config.vision_config)
    vision.save_pretrained(tmp_path / "vision")
    tok.save_pretrained(tmp_path / "vision")
    with pytest.raises(ValueError, match="has no weights for .*not a CLIP text model"):
        build_embedder(EmbedderConfig(kind="clip", model=str(tmp_path / "vision"), local_files_only=True))
