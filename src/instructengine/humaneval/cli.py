"""``instructengine review ...``: create a study, serve it, print and export its results."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from instructengine.errors import App, UsageError, run_app

app = App(help="Blind human pairwise review of evaluation images.", no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", help="YAML config (configs/review.yaml); defaults when omitted.")
_OVERRIDES = typer.Argument(None, help="Dotted overrides, e.g. study.runs=[eval/a/drawbench,eval/b/drawbench]")


def _load(config: Optional[Path], overrides: Optional[List[str]]):
    from instructengine.config import load_config
    from instructengine.humaneval.config import ReviewConfig

    return load_config(ReviewConfig, config, overrides or [])


class _NotFound(UsageError, LookupError):
    """A study, or a results setting, names something the database does not hold."""


@app.command()
def create(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Create a study from two or more evaluation folders; print the secret links."""
    from instructengine.humaneval.study import create_study

    cfg = _load(config, overrides)
    made = create_study(cfg)
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
    from instructengine.humaneval.db import check_schema, make_engine
    from instructengine.humaneval.server import serve as run_server

    cfg = _load(config, overrides)
    engine = make_engine(cfg.resolved_database_url())
    try:
        check_schema(engine)
    finally:
        engine.dispose()
    typer.echo(f"serving {cfg.resolved_database_url()} on http://{cfg.server.host}:{cfg.server.port} "
               f"(links: {Path(cfg.study_dir) / 'tokens.json'}; body limit {cfg.server.max_body_bytes} bytes)")
    run_server(cfg.resolved_database_url(), cfg.server.host, cfg.server.port, server=cfg.server, results=cfg.results)


@app.command()
def results(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Print results and write results.json, votes.csv, votes.json and winrate.png."""
    from instructengine.humaneval import db
    from instructengine.humaneval.results import find_study, format_results, study_results, write_exports

    cfg = _load(config, overrides)
    url = cfg.resolved_database_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise FileNotFoundError(f"no study database at {url}; run `review create` first or set study_dir")
    engine = db.make_engine(url)
    reader, _ = db.make_sessions(engine)
    try:
        with reader() as s:
            try:
                study = find_study(s, cfg.results.study)
            except LookupError as err:
                raise _NotFound(str(err)) from None
            out = cfg.resolved_out_dir()
            rc = cfg.results
            try:
                paths = write_exports(s, study, out, n_boot=rc.bootstrap, confidence=rc.confidence,
                                      exclude=rc.exclude_annotators, min_gold_accuracy=rc.min_gold_accuracy)
            except LookupError as err:
                raise _NotFound(str(err)) from None
            typer.echo(format_results(study_results(s, study, rc.bootstrap, rc.confidence, exclude=rc.exclude_annotators,
                                                    min_gold_accuracy=rc.min_gold_accuracy)))
    finally:
        engine.dispose()
    for name, p in paths.items():
        typer.echo(f"wrote {name}: {p}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process (tests); returns the exit code (known errors: one line, 2)."""
    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
