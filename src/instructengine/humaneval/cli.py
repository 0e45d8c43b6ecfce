"""``instructengine review ...``: create a study, serve it, print and export its results."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Blind human pairwise review of evaluation images.", no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", help="YAML config (configs/review.yaml); defaults when omitted.")
_OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. study.runs=[eval/a/drawbench,eval/b/drawbench]")


def _load(config: Optional[Path], overrides: Optional[List[str]]):
    from instructengine.config import load_config
    from instructengine.humaneval.config import ReviewConfig

    return load_config(ReviewConfig, config, overrides or [])


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


@app.command()
def create(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Create a study from two or more evaluation folders; print the secret links."""
    from instructengine.config import ConfigError
    from instructengine.humaneval.db import SchemaError
    from instructengine.humaneval.inputs import StudyInputError
    from instructengine.humaneval.study import create_study

    try:
        cfg = _load(config, overrides)
        made = create_study(cfg)
    except (ConfigError, StudyInputError, SchemaError) as err:
        _fail(err)
    base = cfg.server.public_url or f"http://{cfg.server.host}:{cfg.server.port}"
    typer.echo(
        f"study {made.name!r}: {made.n_systems} systems, {made.n_items} items, {made.n_comparisons} comparisons, "
        f"{made.n_tasks} tasks; database {made.database_url}"
    )
    for who, link in made.links(base).items():
        typer.echo(f"  {who}: {link}")
    typer.echo(f"links saved in {made.tokens_path} (keep it private)")


@app.command()
def serve(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Serve the annotator and admin pages (blocking; Ctrl-C stops)."""
    from instructengine.config import ConfigError
    from instructengine.humaneval.db import SchemaError, check_schema, make_engine
    from instructengine.humaneval.server import serve as run_server

    try:
        cfg = _load(config, overrides)
        engine = make_engine(cfg.resolved_database_url())
        try:
            check_schema(engine)
        finally:
            engine.dispose()
    except (ConfigError, SchemaError) as err:
        _fail(err)
    typer.echo(f"serving {cfg.resolved_database_url()} on http://{cfg.server.host}:{cfg.server.port} "
               f"(links: {Path(cfg.study_dir) / 'tokens.json'}; body limit {cfg.server.max_body_bytes} bytes)")
    run_server(cfg.resolved_database_url(), cfg.server.host, cfg.server.port, server=cfg.server, results=cfg.results)


@app.command()
def results(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Print results and write results.json, votes.csv, votes.json and winrate.png."""
    from instructengine.config import ConfigError
    from instructengine.humaneval import db
    from instructengine.humaneval.results import find_study, format_results, study_results, write_exports

    try:
        cfg = _load(config, overrides)
    except ConfigError as err:
        _fail(err)
    url = cfg.resolved_database_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        _fail(FileNotFoundError(f"no study database at {url}; run `review create` first or set study_dir"))
    engine = db.make_engine(url)
    reader, _ = db.make_sessions(engine)
    try:
        with reader() as s:
            try:
                study = find_study(s, cfg.results.study)
            except LookupError as err:
                _fail(err)
            out = cfg.resolved_out_dir()
            rc = cfg.results
            try:
                paths = write_exports(s, study, out, n_boot=rc.bootstrap, confidence=rc.confidence,
                                      exclude=rc.exclude_annotators, min_gold_accuracy=rc.min_gold_accuracy)
            except LookupError as err:
                _fail(err)
            typer.echo(format_results(study_results(s, study, rc.bootstrap, rc.confidence, exclude=rc.exclude_annotators,
                                                    min_gold_accuracy=rc.min_gold_accuracy)))
    finally:
        engine.dispose()
    for name, p in paths.items():
        typer.echo(f"wrote {name}: {p}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process (tests); returns the exit code."""
    import click

    try:
        # without standalone mode click returns an Exit's code instead of calling sys.exit
        rv = app(args=argv, standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code


if __name__ == "__main__":
    app()
