"""``instructengine shapes ...``: the ShapesWorld commands (each a few lines into the library)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from instructengine.errors import App, run_app

app = App(help="ShapesWorld: render, judge, pre-train and measure the embedded world "
                  "(evaluate it with `instructengine eval --config configs/eval_shapes.yaml`).",
                  no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", "-c", help="YAML config; defaults when omitted.")
_OVERRIDES = typer.Argument(None, help="Dotted overrides key.sub=value, applied after the file.")


def _load(cls, config: Optional[Path], overrides: Optional[List[str]]):
    from instructengine.config import load_config

    return load_config(cls, config, overrides or [])


@app.command()
def render(caption: str, seed: int = typer.Option(0, help="render seed"),
           out: Path = typer.Option(Path("shape.png"), help="output PNG"),
           scale: int = typer.Option(8, help="nearest-neighbour upscaling for viewing")) -> None:
    """Render one caption to a PNG (e.g. "two small red circles left of a large blue square")."""
    from PIL import Image

    from instructengine.shapes.render import render_caption

    img = render_caption(caption, seed)  # a CaptionError is a one-line error (exit 2)
    Image.fromarray(img).resize((32 * scale, 32 * scale), Image.NEAREST).save(out)
    typer.echo(str(out))


@app.command()
def judge(image: Path, caption: str) -> None:
    """Judge an image against a caption with the oracle; prints per-attribute verdicts as JSON."""
    import numpy as np
    from PIL import Image

    from instructengine.shapes.oracle import judge as oracle_judge

    img = Image.open(image).convert("RGB")
    if img.size != (32, 32):
        img = img.resize((32, 32), Image.NEAREST)
    typer.echo(json.dumps(oracle_judge(np.asarray(img), caption)))


@app.command()
def pretrain(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Pre-train the tiny text-to-image model (configs/shapes_pretrain.yaml reproduces the shipped one)."""
    from instructengine.shapes.pretrain import PretrainConfig, pretrain as run

    typer.echo(str(run(_load(PretrainConfig, config, overrides))))


@app.command("train-clip")
def train_clip(config: Optional[Path] = _CONFIG, overrides: Optional[List[str]] = _OVERRIDES) -> None:
    """Train the tiny contrastive image-text model (configs/shapes_clip.yaml reproduces the shipped one)."""
    from instructengine.shapes.contrastive import ContrastiveConfig, train_contrastive

    typer.echo(str(train_contrastive(_load(ContrastiveConfig, config, overrides))))


@app.command()
def measure(out: Path = typer.Option(Path("docs/shapesworld_measurements.json"), help="where to write the numbers"),
            n: int = typer.Option(2000, help="scenes for the oracle checks")) -> None:
    """Measure the world's reference numbers: oracle agreement on renders, noise and blank images,
    renderer/oracle throughput, checkpoint sizes, contrastive retrieval accuracy."""
    from instructengine.shapes.measure import measure_world

    result = measure_world(n=n)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process with ``argv``; return the exit code (known errors: one line, 2)."""
    return run_app(app, argv)
