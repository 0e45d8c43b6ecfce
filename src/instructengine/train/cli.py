"""``instructengine train ...``: alignment training commands (the lead mounts :data:`app`).

Every command takes ``--config PATH`` and trailing dotted overrides (``optim.lr=5e-6 lora.enabled=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instructengine.errors import App, UsageError, run_app
from instructengine.progress import quiet_option

app = App(help="Alignment training: cross-validation DPO and baselines; ablations on any bundle.",
                  no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", "-c", help="YAML config (configs/train_sd15.yaml, ...)")
_OVERRIDES = typer.Argument(None, help="dotted overrides, e.g. optim.lr=5e-6 method=diffusion_dpo")
_QUIET = quiet_option()


class _BadOption(UsageError, ValueError):
    """A command-line option of this group is malformed."""


@app.command("run")
def run(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES, quiet: bool = _QUIET) -> None:
    """Train one method (resumes from the newest checkpoint; skips a run already complete)."""
    from instructengine.config import load_config
    from instructengine.train.config import TrainConfig
    from instructengine.train.trainer import run_training

    cfg = load_config(TrainConfig, config, overrides or [])
    result = run_training(cfg)
    state = "already complete" if result.skipped else f"{result.steps} steps"
    typer.echo(f"{cfg.method}: {state}; output {result.final_path}")


@app.command()
def shifts(config: Optional[Path] = _CONFIG,
           unet: list[str] = typer.Option(..., "--unet", help="NAME=PATH of a trained U-Net (folder or LoRA weights); repeatable"),
           samples: int = typer.Option(256, help="preference samples drawn at random from data.path"),
           draws: int = typer.Option(4, help="noise/timestep draws per sample"),
           batch: int = typer.Option(32, help="samples per U-Net call (4 combinations each)"),
           seed: int = typer.Option(0, help="seed of the sample choice and the draws"),
           out: Optional[Path] = typer.Option(None, help="also write the table (.md), the numbers (.json) and a chart (.png) there"),
           overrides: Optional[list[str]] = _OVERRIDES) -> None:
    """Error shifts of trained U-Nets vs their reference on the training data: do they fit the
    preferred images or only push the mismatched combinations away (likelihood displacement)?"""
    from instructengine.config import load_config
    from instructengine.runs import atomic_write_text
    from instructengine.train.config import TrainConfig
    from instructengine.train.shifts import error_shifts, format_shifts, plot_shifts

    named = {}
    for spec in unet:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise _BadOption(f"--unet {spec!r}: expected NAME=PATH, e.g. cv_dpo=runs/demo/train/cv_dpo/final/unet")
        named[name] = path
    cfg = load_config(TrainConfig, config, overrides or [])
    df = error_shifts(cfg, named, samples=samples, draws=draws, batch_size=batch, seed=seed,
                      progress=lambda s: typer.echo(s, err=True))
    table = format_shifts(df)
    if out is not None:
        atomic_write_text(out, table + f"\n![error shifts]({out.with_suffix('.png').name})\n")
        atomic_write_text(out.with_suffix(".json"), df.to_json(orient="records", indent=1))
        plot_shifts(df, out.with_suffix(".png"))
    typer.echo(table)


@app.command()
def methods() -> None:
    """List the training methods and their losses."""
    from instructengine.train.losses import LOSSES
    from instructengine.train.methods import METHODS

    for name, m in METHODS.items():
        loss = f"{m.loss} [{LOSSES[m.loss].layout}]" if m.loss else "reward back-propagation"
        typer.echo(f"{name:16s} {loss:34s} data: {m.source:10s} {m.summary}")


def _experiment(config: Optional[Path], overrides: Optional[list[str]], config_class: str, runner: str) -> Path:
    """Load ``config_class`` and call ``runner`` (both in ``instructengine.experiments``), with progress lines;
    known errors become one line (the app's error handling)."""
    import importlib
    import logging

    from instructengine.config import load_config

    progress = logging.getLogger("instructengine.experiments.ablation")  # one line per training / evaluation
    if not progress.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
    module_name, _, cls = config_class.partition(":")
    module = importlib.import_module(f"instructengine.experiments.{module_name}")
    cfg = load_config(getattr(module, cls), config, overrides or [])
    return getattr(module, runner)(cfg)


@app.command()
def ablation(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES, quiet: bool = _QUIET) -> None:
    """Train and evaluate every arm x seed of an ablation and write its table (resumable)."""
    typer.echo(_experiment(config, overrides, "ablation:AblationConfig", "run_ablation").read_text())


@app.command()
def table1(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES, quiet: bool = _QUIET) -> None:
    """The paper's Table 1: prepare every arm's data source, then train/evaluate every arm x seed (resumable)."""
    typer.echo(_experiment(config, overrides, "table1:Table1Config", "run_table1").read_text())


@app.command("data-efficiency")
def data_efficiency(config: Optional[Path] = _CONFIG, overrides: Optional[list[str]] = _OVERRIDES,
                    quiet: bool = _QUIET) -> None:
    """The paper's Figure 5: one training per source x nested subset size x seed; table, points and figure."""
    png = _experiment(config, overrides, "data_efficiency:DataEfficiencyConfig", "run_data_efficiency")
    typer.echo((png.parent / ("table-partial.md" if png.stem.endswith("-partial") else "table.md")).read_text())
    typer.echo(f"figure {png}")


@app.command()
def demo(out: Path = typer.Option(Path("runs/train-demo"), help="output folder"),
         kind: str = typer.Option("sd15", help="tiny model kind: sd15, sdxl or one a bundle registers"),
         method: str = typer.Option("cv_dpo", help="training method"), quiet: bool = _QUIET) -> None:
    """CPU toy run: build a tiny random model and dataset, train 2 steps, print the metrics."""
    from instructengine.train.config import TrainConfig
    from instructengine.train.tiny import save_model, tiny_clip_model, tiny_components, write_candidates, write_samples
    from instructengine.train.trainer import run_training

    cfg = TrainConfig.model_validate({
        "method": method, "run_dir": str(out / "runs"), "model": {"kind": kind, "path": str(out / "model")},
        "data": {"path": str(out / "data"), "resolution": 16}, "batch_size": 4, "micro_batch_size": 2,
        "max_steps": 2, "device": "cpu", "optim": {"lr": 1e-4},
        "refl": {"reward_kwargs": {"path": str(out / "clip")}, "num_inference_steps": 4, "late_step_min": 2},
    })
    if not (out / "model").exists():
        save_model(kind, tiny_components(kind), out / "model")
        write_samples(out / "data", n=8, size=16)
        write_candidates(out / "data", size=16)
        tiny_clip_model(out / "clip", image_size=16)
    result = run_training(cfg)
    typer.echo((result.output_dir / "metrics.jsonl").read_text())
    typer.echo(f"output {result.final_path}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process with ``argv``; return the exit code (known errors: one line, 2)."""
    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
