"""Good data is never replaced by nothing, and bad input files end in one line (exit 2)."""

import pandas as pd
from scripted_server import ScriptedServer
from text_responder import TextStageResponder
from text_stage_helpers import small_config, write_config

from instructengine.pipeline_cli import main
from instructengine.text_pipeline import run_text_stages


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_header_only_review_is_refused_and_entities_kept(tmp_path, capsys):
    with ScriptedServer(TextStageResponder()) as srv:
        cfg = small_config(tmp_path / "run", srv.base_url)
        run_text_stages(cfg, stages=["taxonomy", "entities"])
        path = write_config(cfg, tmp_path / "c.yaml")
        entities = tmp_path / "run" / "entities" / "entities.parquet"
        good = pd.read_parquet(entities)
        assert len(good) > 0
        review = tmp_path / "run" / "taxonomy" / "review.csv"
        review.write_text(review.read_text().splitlines()[0] + "\n")  # a spreadsheet saved with no rows
        err = _one_line_error(capsys, ["review", "--config", str(path)])
        assert "review.csv" in err and "no rows" in err
        _one_line_error(capsys, ["entities", "--config", str(path)])
    pd.testing.assert_frame_equal(pd.read_parquet(entities), good)


def test_stage_that_keeps_nothing_leaves_the_old_artifact(tmp_path):
    import pytest

    from instructengine.runs import EmptyArtifactError

    with ScriptedServer(TextStageResponder()) as srv:
        cfg = small_config(tmp_path / "run", srv.base_url)
        run_text_stages(cfg)
    pairs = tmp_path / "run" / "instructions" / "pairs.parquet"
    good = pd.read_parquet(pairs)
    # the same pairs stage with checks nothing passes (a threshold typo): nothing may be wiped
    strict = small_config(tmp_path / "run", srv.base_url, pairs={"min_words": 39, "max_words": 40})
    with ScriptedServer(TextStageResponder()) as srv:
        with pytest.raises(EmptyArtifactError, match="left as it is"):
            run_text_stages(strict.model_copy(update={"llm": strict.llm.model_copy(update={"base_url": srv.base_url})}), stages=["pairs"])
    pd.testing.assert_frame_equal(pd.read_parquet(pairs), good)


def test_review_csv_not_utf8_is_one_line(tmp_path, capsys):
    with ScriptedServer(TextStageResponder()) as srv:
        cfg = small_config(tmp_path / "run", srv.base_url)
        run_text_stages(cfg, stages=["taxonomy"])
    path = write_config(cfg, tmp_path / "c.yaml")
    review = tmp_path / "run" / "taxonomy" / "review.csv"
    review.write_bytes(review.read_text().replace("people", "caf\u00e9 people").encode("latin-1"))
    err = _one_line_error(capsys, ["review", "--config", str(path)])
    assert "not UTF-8" in err and "CSV UTF-8" in err


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: runs/x\ntaxonomy:\n  n_themes: [4\n  axes: theme\n")
    err = _one_line_error(capsys, ["taxonomy", "--config", str(bad)])
    assert "bad.yaml" in err and "line" in err and "YAML syntax error" in err
