"""The three text stages end to end against a real local server (tests/server)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from text_stage_helpers import small_config, write_config, artifacts, assert_same_artifacts
from scripted_server import ScriptedServer
from text_responder import TextStageResponder

from instructengine.instructions.validate import check_pair
from instructengine.pipeline_cli import main
from instructengine.text_pipeline import run_text_stages

def test_stages_end_to_end(server, tmp_path):
    cfg = small_config(tmp_path / "run", server.base_url)
    manifests = run_text_stages(cfg)
    art = artifacts(cfg.run_dir)

    # taxonomy: the seeds, then the theme two samples agreed on; "animalss" merged into "animals"
    tax = json.loads(art["taxonomy"])
    assert [t["name"] for t in tax["themes"]] == ["people", "animals", "landscapes", "vehicles"]
    assert tax["themes"][1]["aliases"] == ["animalss"]
    assert all(len(t["subtopics"]) == 3 for t in tax["themes"])
    assert {s["axis"] for t in tax["themes"] for s in t["subtopics"]} == {"theme", "style"}
    tm = manifests["taxonomy"].to_dict()["counts"]
    # counts are subtopics; reasons starting "theme_" count themes
    subtopic_drops = sum(n for r, n in tm["dropped"].items() if r.startswith("subtopic_"))
    assert tm["out"] == 12 and tm["in"] == tm["out"] + subtopic_drops
    assert tm["dropped"]["theme_near_duplicate"] == 1
    assert tm["dropped"]["subtopic_near_duplicate"] >= 4  # "<word> <theme>s" next to "<word> <theme>"

    # entities: the scripted far, rejected and repeated entities are gone, one of each per subtopic
    ent = art["entities"]
    assert not ent["entity"].str.contains("impostor|xylophone").any()
    assert not ent["entity"].str.lower().duplicated().any()
    assert set(ent.columns) >= {"entity_id", "theme", "subtopic", "axis", "entity", "similarity"}
    em = manifests["entities"].to_dict()["counts"]
    for reason in ("far_from_subtopic", "rejected_by_check", "repeated_in_subtopic"):
        assert em["dropped"][reason] == 12, reason
    assert em["in"] == em["out"] + em["dropped_total"]
    assert (ent["similarity"] >= 0.3).all()

    # pairs: every kept pair passes the checks; the scripted bad ones are counted by reason
    pairs = art["pairs"]
    assert len(pairs) and set(pairs["dimension"]) == {"content", "counterfactual", "aesthetics"}
    assert all(check_pair(r.instruction_1, r.instruction_2, r.entity, 4, 40) is None for r in pairs.itertuples())
    pm = manifests["pairs"].to_dict()["counts"]
    assert pm["in"] == len(ent) * 3
    assert pm["in"] == pm["out"] + pm["dropped_total"]
    assert pm["dropped"].get("missing_entity", 0) > 0 and pm["dropped"].get("identical", 0) > 0

    # usage in the manifests adds up to what the server saw
    total = sum(m.extra["llm_usage"]["http_requests"] for m in manifests.values())
    assert total == server.total
    assert all(m.extra["llm_usage"]["prompt_tokens"] > 0 for m in manifests.values())


def test_rerun_makes_zero_requests_and_same_artifacts(server, tmp_path):
    cfg = small_config(tmp_path / "run", server.base_url)
    run_text_stages(cfg)
    first, n = artifacts(cfg.run_dir), server.total
    run_text_stages(cfg)
    assert server.total == n
    assert_same_artifacts(first, artifacts(cfg.run_dir))
    # without the ledgers the cache alone still answers everything
    for ledger in Path(cfg.run_dir).glob("*/progress-*.jsonl"):
        ledger.unlink()
    manifests = run_text_stages(cfg)
    assert server.total == n
    assert sum(m.extra["llm_usage"]["cache_hits"] for m in manifests.values()) > 0
    assert_same_artifacts(first, artifacts(cfg.run_dir))


def test_cli_stage_by_stage_equals_all_at_once(server, tmp_path):
    together = small_config(tmp_path / "together", server.base_url)
    run_text_stages(together)
    apart = small_config(tmp_path / "apart", server.base_url)
    path = write_config(apart, tmp_path / "apart.yaml")
    for stage in ("taxonomy", "review", "entities", "pairs"):
        assert main([stage, "--config", str(path)]) == 0, stage
    assert_same_artifacts(artifacts(together.run_dir), artifacts(apart.run_dir))
    # a dotted override reaches the config
    assert main(["pairs", "--config", str(path), "pairs.dimensions=[content]"]) == 0
    assert set(pd.read_parquet(Path(apart.run_dir) / "instructions" / "pairs.parquet")["dimension"]) == {"content"}


def test_entity_stage_needs_the_taxonomy(tmp_path, server, capsys):
    cfg = small_config(tmp_path / "empty", server.base_url)
    path = write_config(cfg, tmp_path / "c.yaml")
    assert main(["entities", "--config", str(path)]) == 2
    assert "run the taxonomy stage first" in capsys.readouterr().err


def test_permanent_error_stops_the_stage_with_a_clear_message(tmp_path, capsys):
    with ScriptedServer(TextStageResponder(), api_key="sk-needed") as srv:
        cfg = small_config(tmp_path / "run", srv.base_url)
        path = write_config(cfg, tmp_path / "c.yaml")
        assert main(["text", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "HTTP 401" in err and "IE_TEST_KEY_UNSET is NOT set" in err
        assert srv.total <= cfg.taxonomy.theme_samples  # failed fast: no retries, nothing after
        assert not (Path(cfg.run_dir) / "taxonomy" / "manifest.json").exists()


def test_bad_config_value_is_named(tmp_path, capsys):
    assert main(["taxonomy", "taxonomy.n_themes=0", f"run_dir={tmp_path}"]) == 2
    assert "taxonomy.n_themes" in capsys.readouterr().err


def test_pipeline_with_tiny_clip_embedder(server, tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from tiny_clip import tiny_clip_embedder

    embedder = tiny_clip_embedder(["famous", "rare", "oil", "painting", "people", "animals", "landscapes", "vehicles"])
    cfg = small_config(
        tmp_path / "run", server.base_url,
        entities={"similarity_threshold": -1.0, "dedupe_threshold": None},
        taxonomy={"dedupe_threshold": 1.0001},
    )
    manifests = run_text_stages(cfg, embedder=embedder)
    ent = artifacts(cfg.run_dir)["entities"]
    assert len(ent) > 0 and ent["similarity"].between(-1.0001, 1.0001).all()
    assert manifests["entities"].extra["embedder"].startswith("clip:CLIPTextModelWithProjection")


def test_unreachable_server_ends_with_an_error_not_an_empty_success(tmp_path, capsys):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    cfg = small_config(tmp_path / "run", f"http://127.0.0.1:{port}/v1", llm={"max_retries": 1})
    path = write_config(cfg, tmp_path / "c.yaml")
    assert main(["text", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stage 'taxonomy' kept nothing" in err and "unavailable:connection" in err
    manifest = json.loads((Path(cfg.run_dir) / "taxonomy" / "manifest.json").read_text())
    assert manifest["counts"]["dropped"]["request:themes:unavailable:connection"] == 2
    # no theme list came back, so the 3 seeds x 2 axes x 2 samples were asked for subtopics
    assert manifest["counts"]["dropped"]["request:subtopics:unavailable:connection"] == 3 * 2 * 2
    assert not (Path(cfg.run_dir) / "entities").exists()
