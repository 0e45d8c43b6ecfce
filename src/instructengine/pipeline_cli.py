"""Command line of the text stages (mounted by ``instructengine.cli``; also ``python -m instructengine.pipeline_cli``).

Every command takes ``--config PATH`` and trailing dotted overrides, e.g.
``instructengine data taxonomy --config configs/data_llm.yaml taxonomy.n_themes=10 llm.concurrency=8``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from instructengine.errors import App, run_app

app = App(help="Text stages of the data pipeline: taxonomy -> entities -> instruction pairs.", no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (TextPipelineConfig); defaults when omitted.")
OverridesArg = typer.Argument(None, help="Dotted overrides key.sub=value, applied after the file.")


def _run(config: Optional[Path], overrides: Optional[List[str]], stages: tuple[str, ...]) -> None:
    from instructengine.config import load_config
    from instructengine.text_pipeline import TextPipelineConfig, run_text_stages

    cfg = load_config(TextPipelineConfig, config, overrides or [])
    manifests = run_text_stages(cfg, stages)
    for name, m in manifests.items():
        d = m.to_dict()["counts"]
        usage = m.extra.get("llm_usage") or {}
        typer.echo(
            f"{name}: in {d['in']} -> out {d['out']}, dropped {d['dropped_total']} {json.dumps(d['dropped'])}"
            + (f"; http requests {usage.get('http_requests', 0)}, cache hits {usage.get('cache_hits', 0)}" if usage else "")
        )


@app.command()
def taxonomy(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Stage 1: seed themes -> primary themes -> subtopics (taxonomy.json + review.csv)."""
    _run(config, overrides, ("taxonomy",))


@app.command()
def entities(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Stage 2: entities per subtopic (reads the reviewed taxonomy; writes entities.parquet)."""
    _run(config, overrides, ("entities",))


@app.command()
def pairs(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Stage 3: contrasting instruction pairs per entity and dimension (pairs.parquet)."""
    _run(config, overrides, ("pairs",))


@app.command()
def text(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg) -> None:
    """All three text stages in order."""
    _run(config, overrides, ("taxonomy", "entities", "pairs"))


@app.command()
def review(config: Optional[Path] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg) -> None:
    """Check <run_dir>/taxonomy/review.csv against taxonomy.json and print what it changes."""
    from instructengine.config import load_config
    from instructengine.taxonomy.review import load_reviewed_taxonomy
    from instructengine.text_pipeline import TextPipelineConfig

    cfg = load_config(TextPipelineConfig, config, overrides or [])
    taxonomy, edits = load_reviewed_taxonomy(Path(cfg.run_dir) / "taxonomy")
    typer.echo(f"review ok: {len(taxonomy.themes)} themes, {taxonomy.n_subtopics} subtopics; edits {json.dumps(edits)}")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI in-process with ``argv``; return the exit code (known errors: one line, 2)."""
    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
