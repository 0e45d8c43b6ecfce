"""``instructengine train ...``: alignment training commands (the lead mounts :data:`app`).

Every command takes ``--config PATH`` and trailing dotted overrides (``optim.lr=5e-6 lora.enabled=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Alignment training: cross-validation DPO and baselines; the ShapesWorld ablation.",
                  no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", "-c", help="YAML config (configs/train_sd15.yaml, ...)")
_OVERRIDES = typer.Argument(None, help="dotted overrides, e.g. optim.lr=5e-6 method=diffusion_dpo")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command("run")
def run(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES) -> None:
    """Train one method (resumes from the newest checkpoint; skips a run already complete)."""
    from instructengine.config import ConfigError, load_config
    from instructengine.train.config import TrainConfig
    from instructengine.train.trainer import TrainingDiverged, run_training

    try:
        cfg = load_config(TrainConfig, config, overrides or [])
        result = run_training(cfg)
    except (ConfigError, TrainingDiverged, ValueError, FileNotFoundError) as err:
        _fail(str(err), 2 if isinstance(err, ConfigError) else 1)
    state = "already complete" if result.skipped else f"{result.steps} steps"
    typer.echo(f"{cfg.method}: {state}; output {result.final_path}")


@app.command()
def methods() -> None:
    """List the training methods and their losses."""
    from instructengine.train.losses import LOSSES
    from instructengine.train.methods import METHODS

    for name, m in METHODS.items():
        loss = f"{m.loss} [{LOSSES[m.loss].layout}]" if m.loss else "reward back-propagation"
        typer.echo(f"{name:16s} {loss:34s} data: {m.source:10s} {m.summary}")


@app.command()
def ablation(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES) -> None:
    """Train and evaluate every arm x seed of an ablation and write its table (resumable)."""
    from instructengine.config import ConfigError, load_config
    from instructengine.train.ablation import AblationConfig, run_ablation

    try:
        cfg = load_config(AblationConfig, config, overrides or [])
        table = run_ablation(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        _fail(str(err), 2 if isinstance(err, ConfigError) else 1)
    typer.echo(table.read_text())


@app.command()
def demo(out: Path = typer.Option(Path("runs/train-demo"), help="output folder"),
         kind: str = typer.Option("sd15", help="tiny model: sd15, sdxl or shapes"),
         method: str = typer.Option("cv_dpo", help="training method")) -> None:
    """CPU toy run: build a tiny random model and dataset, train 2 steps, print the metrics."""
    from instructengine.train.config import TrainConfig
    from instructengine.train.tiny import save_model, tiny_clip_model, tiny_components, write_candidates, write_samples
    from instructengine.train.trainer import run_training

    if not (out / "model").exists():
        save_model(kind, tiny_components(kind), out / "model")
        write_samples(out / "data", n=8, size=16)
        write_candidates(out / "data", size=16)
        tiny_clip_model(out / "clip", image_size=16)
    cfg = TrainConfig.model_validate({
        "method": method, "run_dir": str(out / "runs"), "model": {"kind": kind, "path": str(out / "model")},
        "data": {"path": str(out / "data"), "resolution": 16}, "batch_size": 4, "micro_batch_size": 2,
        "max_steps": 2, "device": "cpu", "optim": {"lr": 1e-4},
        "refl": {"reward_kwargs": {"path": str(out / "clip")}, "num_inference_steps": 4, "late_step_min": 2},
    })
    result = run_training(cfg)
    typer.echo((result.output_dir / "metrics.jsonl").read_text())
    typer.echo(f"output {result.final_path}")


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
