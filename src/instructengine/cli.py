"""The ``instructengine`` command line: one typer app; every subcommand is a thin call into a stage.

Sub-apps live beside the library code they call (``instructengine.<stage>.cli``) and are mounted
here. ``main(argv)`` runs in-process for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from instructengine import registry
from instructengine.errors import App, run_app
from instructengine.evaluate.cli import eval_command, report_command
from instructengine.humaneval.cli import app as review_app
from instructengine.images.cli import app as images_app
from instructengine.pipeline_cli import app as data_app
from instructengine.progress import quiet_option
from instructengine.train.cli import app as train_app

app = App(
    help="InstructEngine: instruction-driven text-to-image alignment (taxonomy -> preference data -> "
    "cross-validation DPO -> evaluation).",
    no_args_is_help=True,
)
for _name in registry.available("cli"):  # command groups of the backend bundles (e.g. `instructengine shapes`)
    app.add_typer(registry.resolve("cli", _name), name=_name)
app.add_typer(data_app, name="data")
app.add_typer(images_app, name="images")
app.add_typer(train_app, name="train")
app.command("eval", help="Evaluate models on prompt sets (DrawBench, ...): images, six metrics + Average.")(eval_command)
app.command("report", help="Table-1 style report (markdown + HTML) from evaluation folders.")(report_command)
app.add_typer(review_app, name="review")


@app.command()
def run(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (MainJobConfig)"),
        overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides key.sub=value"),
        quiet: bool = quiet_option()) -> None:
    """The whole method in one run, on any bundle: data -> training of every method -> evaluation -> report -> review."""
    from instructengine.experiments.main_job import load_main_job, run_main_job

    cfg = load_main_job(config, overrides or [])
    typer.echo(str(run_main_job(cfg, log=typer.echo)))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (``argv=None`` reads sys.argv). A known error (see
    :mod:`instructengine.errors`) ends as one line on stderr and exit code 2."""
    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
