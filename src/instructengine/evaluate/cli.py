"""``instructengine eval`` / ``instructengine report``: evaluate models on a prompt set, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from instructengine.errors import App, run_app
from instructengine.progress import quiet_option

app = App(help="Evaluate text-to-image models on prompt sets and write Table-1 style reports.", no_args_is_help=True)

_CONFIG = typer.Option(..., "--config", help="YAML config (e.g. configs/eval_drawbench_sd15.yaml).")
_OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. device=cuda benchmark.limit=20 images_per_prompt=1")


def _load(config: Path, overrides: Optional[List[str]]):
    from instructengine.config import load_config
    from instructengine.evaluate.config import EvalConfig

    return load_config(EvalConfig, config, overrides or [])


@app.command("eval")
def eval_command(config: Path = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES, quiet: bool = quiet_option()) -> None:
    """Generate the models' images (fixed seeds, resumable), score them, and write the report."""
    from instructengine.evaluate.report import report
    from instructengine.evaluate.runner import evaluate

    cfg = _load(config, overrides)
    from accelerate import PartialState

    evaluate(cfg, log=typer.echo)  # on every process of an `accelerate launch`: each takes a slice
    if cfg.report.after_eval and PartialState().is_main_process:
        report(cfg, log=typer.echo)


@app.command("report")
def report_command(config: Path = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Write report.md / report.html / report.json from the models' scored eval folders."""
    from instructengine.evaluate.report import report

    report(_load(config, overrides), log=typer.echo)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the app in-process (tests call ``main([...])``); known errors: one line, exit 2."""
    return run_app(app, argv)
