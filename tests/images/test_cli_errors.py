"""Every command line reports a known error as ONE line on stderr and exits 2; unknown errors keep
their traceback (instructengine.errors, one place for all command groups)."""

import numpy as np
import pytest
import torch
import typer
from images_helpers import write_pairs

from instructengine.cli import main
from instructengine.errors import App, run_app


def _one_line(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_run_config_error(capsys, tmp_path):
    _one_line(capsys, ["run", "--config", "configs/shapes_demo.yaml", f"run_dir={tmp_path / 'r'}", "train.max_stepz=3"],
              "train", "max_stepz", "unknown field")
    assert not (tmp_path / "r").exists()


def test_unreachable_model_names_the_config_field(capsys, tmp_path):
    # what an unreachable hub gives: transformers' OSError (here without network: local_files_only)
    _one_line(capsys, ["data", "taxonomy", f"run_dir={tmp_path}", "embedder.model=nobody/no-such-clip",
                       "embedder.local_files_only=true"],
              "embedder.model='nobody/no-such-clip' could not be loaded", "OSError", "local model folder")


def test_images_cli_refuses_cuda_without_one_before_work(capsys, tmp_path, no_cuda):
    write_pairs(tmp_path, [("a red circle", "a blue circle")])
    _one_line(capsys, ["images", "candidates", f"run_dir={tmp_path}", "generator.kind=shapes_render",
                       "generator.device=cuda"], "generator.device='cuda' needs a CUDA device", "'cpu'")
    _one_line(capsys, ["images", "select", f"run_dir={tmp_path}", "select.scorer.kind=clip",
                       "select.scorer.device=cuda:1"], "select.scorer.device='cuda:1'")
    assert not (tmp_path / "candidates").exists()


def test_train_fp16_on_cpu_and_raw_validation_error(capsys, tmp_path):
    _one_line(capsys, ["train", "run", "mixed_precision=fp16", "device=cpu", f"run_dir={tmp_path}"],
              "mixed_precision='fp16' needs a CUDA device", "bf16")
    # `train demo` validates a TrainConfig itself: pydantic's own ValidationError, also one line
    _one_line(capsys, ["train", "demo", "--method", "cvdpo", "--out", str(tmp_path / "demo")],
              "method = 'cvdpo'", "choose one of")
    assert not (tmp_path / "demo").exists()  # refused before the tiny model was written


def test_eval_review_and_shapes_errors(capsys, tmp_path, no_cuda):
    _one_line(capsys, ["eval", "--config", "configs/eval_shapes.yaml", "device=cuda", f"run_dir={tmp_path}"],
              "device='cuda' needs a CUDA device")
    _one_line(capsys, ["review", "results", f"study_dir={tmp_path / 'none'}"], "no study database")
    _one_line(capsys, ["shapes", "render", "seven purple blobs"], "expected a count")
    _one_line(capsys, ["images", "dataset", f"run_dir={tmp_path / 'empty'}"], "run the")  # an input file missing


def test_sub_clis_share_the_handler(capsys, tmp_path):
    from instructengine.images.cli import main as images_main
    from instructengine.pipeline_cli import main as data_main
    from instructengine.train.cli import main as train_main

    for fn, argv in ((images_main, ["candidates", "candidates.n_candidate=4"]),
                     (data_main, ["taxonomy", "taxonomy.n_themez=1"]),
                     (train_main, ["run", "optim.lrr=1"])):
        assert fn(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "unknown field" in err[0], err


def test_unknown_errors_keep_their_traceback(capsys):
    app = App()

    @app.command()
    def boom(kind: str) -> None:
        from instructengine.images.baselines import normalize_scores

        if kind == "bug":
            raise KeyError("a bug in the library")
        if kind == "foreign":
            int("not a number")  # a ValueError raised outside instructengine: a bug to show in full
        if kind == "check":
            normalize_scores(np.array([1.0, 2.0]), "bogus")  # one of the library's own checks: its message is for the user
        raise FileNotFoundError(2, "No such file or directory", "data/samples.parquet")

    @app.command()
    def fine() -> None:
        typer.echo("ok")

    with pytest.raises(KeyError, match="a bug in the library"):
        run_app(app, ["boom", "bug"])
    with pytest.raises(ValueError, match="invalid literal"):
        run_app(app, ["boom", "foreign"])
    assert run_app(app, ["boom", "check"]) == 2
    assert capsys.readouterr().err.strip() == "error: normalize must be none, zscore or minmax, got 'bogus'"
    assert run_app(app, ["boom", "missing"]) == 2
    assert capsys.readouterr().err.strip() == "error: [Errno 2] No such file or directory: 'data/samples.parquet'"
    assert run_app(app, ["fine"]) == 0 and capsys.readouterr().out == "ok\n"
    assert run_app(app, ["nope"]) == 2  # a usage error: click's own message and exit code
