"""Command line of the image stages (mounted by ``instructengine.cli``; also ``python -m instructengine.images.cli``).

Every command takes ``--config PATH`` (a :class:`~instructengine.images.config.DataPipelineConfig`
YAML) and trailing dotted overrides, e.g.
``instructengine images candidates --config configs/data_shapes.yaml candidates.n_candidates=4``.
Sharded generation: ``accelerate launch --num_processes 2 --cpu -m instructengine.images.cli candidates --config ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import typer

from instructengine.errors import App, run_app
from instructengine.progress import quiet_option

app = App(
    help="Image stages of the data pipeline: candidates -> select -> judge -> dataset (+ baselines).",
    no_args_is_help=True,
)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (DataPipelineConfig); defaults when omitted.")
OverridesArg = typer.Argument(None, help="Dotted overrides key.sub=value, applied after the file.")
QuietOpt = quiet_option()


def _run(config: Optional[Path], overrides: Optional[List[str]], stages: Sequence[str], with_text: bool = False) -> None:
    from instructengine.config import load_config
    from instructengine.images.config import DataPipelineConfig
    from instructengine.images.pipeline import run_image_stages

    cfg = load_config(DataPipelineConfig, config, overrides or [])
    run_image_stages(cfg, stages, with_text=with_text, log=typer.echo)


@app.command()
def text(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Stages 1-3 (taxonomy, entities, pairs) from a whole-pipeline config (`instructengine data text`
    reads text-only configs)."""
    _run(config, overrides, (), with_text=True)


@app.command()
def candidates(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Stage 4: N candidate images per instruction (sharded across accelerate processes)."""
    _run(config, overrides, ("candidates",))


@app.command()
def select(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Stage 5a: best-of-N per instruction by the configured image-text scorer."""
    _run(config, overrides, ("select",))


@app.command()
def judge(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Stage 5b: keep or drop each selected image (VLM or ShapesWorld oracle)."""
    _run(config, overrides, ("judge",))


@app.command()
def dataset(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Stage 6: samples.parquet + images + dataset card (funnel, histograms)."""
    _run(config, overrides, ("dataset",))


@app.command()
def baselines(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg, quiet: bool = QuietOpt) -> None:
    """Baseline data from the same candidates: reward best/worst-of-N, AGFSync weighted multi-score."""
    _run(config, overrides, ("baselines",))


@app.command("all")
def all_stages(
    config: Optional[Path] = ConfigOpt,
    overrides: Optional[List[str]] = OverridesArg,
    quiet: bool = QuietOpt,
    text: bool = typer.Option(False, "--text/--no-text", help="Run the text stages (taxonomy, entities, pairs) first."),
) -> None:
    """All image stages in order (with --text: the whole data pipeline from the taxonomy on)."""
    from instructengine.images.config import IMAGE_STAGES

    _run(config, overrides, IMAGE_STAGES, with_text=text)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI in-process with ``argv``; return the exit code (known errors: one line, 2)."""
    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
