"""The main job: the whole method as ONE run, on any bundle.

``instructengine run --config configs/<setup>.yaml`` chains, in one ``run_dir``:

* ``data``: the data pipeline from its own config (taxonomy -> entities -> instruction pairs ->
  candidates -> best-of-N -> judge -> dataset + card -> baseline datasets);
* ``train``: one training per entry of ``methods`` (CV-DPO and the paper's baselines), each the
  shared training config plus the method's own overrides, on the data the method names: the
  pipeline's dataset, one of its baseline datasets (reward best/worst of N), or any folder;
* ``eval``: the evaluation harness samples the base model (the eval config's first model) and
  every trained model (the base with the method's U-Net or LoRA swapped in) on the same prompts
  and seeds and scores them (VLM pairwise judge when the eval config enables it);
* ``report``: the Table-1 report (metrics + Average, intervals, relative change, grid);
* ``review``: a blind human pairwise study of the first method against the base and the other
  methods, ready for ``instructengine review serve``.

Every hand-off is derived from ``run_dir``: the training reads ``<run_dir>/<dataset folder>`` or
``<run_dir>/baselines/<name>``, the evaluation loads ``<run_dir>/train/<method>/final``, the
review reads ``<run_dir>/eval/<model>/<benchmark>``. All configs are loaded and validated before
any stage starts and saved resolved in ``run_dir``; a re-run skips finished work and a killed run
resumes (each stage resumes on its own). Stage config files are resolved relative to the main
config file. On the command line a dotted override whose first key is a stage and whose second is
not a field of the stage reference goes to that stage's config: ``train.max_steps=2`` is
``train.overrides+=[max_steps=2]``, ``eval.models.base.model=/weights`` names the base by its name.

Under ``accelerate launch`` every process runs the job: the candidates stage, each training and
the evaluation's generation and scoring spread over all processes (one node of 8 GPUs or several
nodes); the text stages, the image judge, the VLM pairwise judge, the report and the review run on
the main process while the others wait.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from instructengine.config import Config, ConfigError, load_config, save_resolved

__all__ = ["MainJobConfig", "MethodRun", "STAGES", "load_main_job", "run_main_job", "stage_configs"]

STAGES = ("data", "train", "eval", "report", "review")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StageRef(Config):
    """A stage's own config file and dotted overrides applied on top of it."""

    config: Path = Field(description="YAML file of the stage's config class (relative to the main config file)")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides key.sub=value")


class MethodRun(Config):
    """One trained model: a training method on a data source, with its own overrides."""

    name: str = Field(description="folder <run_dir>/train/<name> and the model's name in the evaluation and report")
    method: str = Field("cv_dpo", description="training method (see `instructengine train methods`)")
    data: str = Field(
        "dataset",
        description="'dataset' (the data pipeline's preference dataset), 'baseline:<name>' (a baseline dataset of "
        "the data pipeline: reward best/worst of N), or a folder",
    )
    overrides: list[str] = Field(default_factory=list, description="dotted overrides of the shared training config")

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"method run name {v!r} must be folder-safe: letters, digits, '.', '_', '-'")
        return v


class ReviewRef(StageRef):
    """The blind review study: its config file, whose ``study.runs`` the main job fills in."""

    max_prompts: int | None = Field(None, ge=1, description="prompts in the study (null: the review config's)")


class MainJobConfig(Config):
    """The whole method in one run: data -> training of every method -> evaluation -> report -> review."""

    config_paths: ClassVar[tuple[str, ...]] = ("data.config", "train.config", "eval.config", "review.config")

    run_dir: Path = Field(Path("runs/demo"), description="folder of this run (one sub-folder per stage)")
    stages: list[Literal["data", "train", "eval", "report", "review"]] = Field(
        default_factory=lambda: ["data", "train", "eval", "report"], description=f"stages to run, in order; any of {STAGES}"
    )
    data: StageRef = Field(description="data pipeline (class: instructengine.images.config.DataPipelineConfig)")
    train: StageRef = Field(description="shared training config of every method (class: instructengine.train.config.TrainConfig)")
    methods: list[MethodRun] = Field(
        default_factory=lambda: [MethodRun(name="cv-dpo")], min_length=1,
        description="the trained models, in the report's order (the first is InstructEngine's)",
    )
    only_methods: list[str] | None = Field(None, description="train and evaluate only these methods (names); null: all")
    eval: StageRef = Field(description="evaluation + report (class: instructengine.evaluate.config.EvalConfig); its first "
                           "model is the base, one model per method is added")
    review: ReviewRef | None = Field(None, description="blind review study (class: instructengine.humaneval.config.ReviewConfig)")

    @model_validator(mode="after")
    def _check(self) -> "MainJobConfig":
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods: names {dup} are used twice")
        unknown = sorted(set(self.only_methods or []) - set(names))
        if unknown:
            raise ValueError(f"only_methods: {unknown} are not among the methods {names}")
        if "review" in self.stages and self.review is None:
            raise ValueError("stage 'review' needs a `review` section (a review config file)")
        return self

    def selected_methods(self) -> list[MethodRun]:
        return [m for m in self.methods if self.only_methods is None or m.name in self.only_methods]


# --------------------------------------------------------------------------------------------- loading


def _route_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Send ``<stage>.<key>=v`` to that stage's overrides unless ``<key>`` is a field of the stage reference."""
    out: list[str] = []
    routed: dict[str, list[str]] = {s: [] for s in ("data", "train", "eval", "review")}
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        parts = key.split(".")
        if len(parts) >= 2 and parts[0] in routed and parts[1] not in ReviewRef.model_fields:
            routed[parts[0]].append(text.split(".", 1)[1])
        else:
            out.append(text)
    return out, routed


def load_main_job(path: str | Path | None, overrides: list[str] = ()) -> MainJobConfig:
    """The main job config from ``path`` plus command-line overrides (routed as the module doc says).

    Raises:
        ConfigError: a missing or invalid file or value.
    """
    own, routed = _route_overrides(list(overrides))
    cfg = load_config(MainJobConfig, path, own)
    update = {}
    for stage, extra in routed.items():
        if not extra:
            continue
        ref = getattr(cfg, stage)
        if ref is None:
            raise ConfigError(f"overrides {extra} address stage {stage!r}, which this main job has no section for")
        update[stage] = ref.model_copy(update={"overrides": [*ref.overrides, *extra]})
    return cfg.model_copy(update=update) if update else cfg


def _data_path(cfg: MainJobConfig, run: MethodRun, data: Any) -> str:
    if run.data == "dataset":
        return str(Path(cfg.run_dir) / data.dataset.folder)
    if run.data.startswith("baseline:"):
        name = run.data.split(":", 1)[1]
        known = [b.name for b in data.baselines]
        if name not in known:
            raise ConfigError(f"methods.{run.name}.data = {run.data!r}: the data pipeline has no baseline {name!r} "
                              f"(its baselines: {known})")
        return str(Path(cfg.run_dir) / "baselines" / name)
    return run.data


def stage_configs(cfg: MainJobConfig) -> dict[str, Any]:
    """Every stage's config, loaded, tied to ``cfg.run_dir`` and validated: ``data``, ``train``
    (name -> TrainConfig per method), ``eval`` and (when configured) ``review``.

    Raises:
        ConfigError: a missing or invalid stage config (the message names the file and the method).
    """
    from instructengine.evaluate.config import EvalConfig
    from instructengine.images.config import DataPipelineConfig
    from instructengine.train.config import TrainConfig

    run = str(cfg.run_dir)
    data = load_config(DataPipelineConfig, cfg.data.config, [*cfg.data.overrides, f"run_dir={run}"])
    trains: dict[str, Any] = {}
    for m in cfg.selected_methods():
        try:
            trains[m.name] = load_config(TrainConfig, cfg.train.config, [
                *cfg.train.overrides, f"method={m.method}", *m.overrides, f"run_dir={run}", f"name={m.name}",
                f"data.path={_data_path(cfg, m, data)}"])
        except ConfigError as err:
            raise ConfigError(f"method {m.name!r}: {err}") from None
    ev = load_config(EvalConfig, cfg.eval.config, [*cfg.eval.overrides, f"run_dir={run}"])
    base = ev.models[0]
    taken = [mm.name for mm in ev.models]
    models = [base.model_dump(mode="json")]
    for name, t in trains.items():
        if name in taken:
            raise ConfigError(f"{cfg.eval.config}: model {name!r} clashes with method {name!r}; rename one of them")
        final = Path(run) / "train" / t.output_name / "final"
        unet = final / "unet" if not t.lora.enabled else final
        models.append({**base.model_dump(mode="json"), "name": name, "unet": str(unet)})
    shown = [base.name, *trains]
    ev = ev.model_validate({**ev.model_dump(mode="json"), "models": models,
                            "report": {**ev.report.model_dump(mode="json"), "models": shown, "base": base.name}})
    out = {"data": data, "train": trains, "eval": ev}
    if cfg.review is not None:
        out["review"] = _review_config(cfg, ev, list(trains))
    return out


def _review_config(cfg: MainJobConfig, ev: Any, methods: list[str]) -> Any:
    from instructengine.evaluate.storage import model_dir
    from instructengine.humaneval.config import ReviewConfig

    assert cfg.review is not None
    runs = [str(model_dir(ev.run_dir, name, ev.benchmark.name)) for name in [*methods[:1], ev.models[0].name, *methods[1:]]]
    extra = [f"study_dir={Path(cfg.run_dir) / 'review'}", f"study.runs={runs}", "study.names=[]", "study.pairs=reference"]
    if cfg.review.max_prompts is not None:
        extra.append(f"study.max_prompts={cfg.review.max_prompts}")
    return load_config(ReviewConfig, cfg.review.config, [*cfg.review.overrides, *extra])


# --------------------------------------------------------------------------------------------- running


def run_main_job(cfg: MainJobConfig, log=print) -> Path:
    """Run the enabled stages; returns the report.md path (or the run folder without a report)."""
    from accelerate import PartialState

    run = Path(cfg.run_dir)
    configs = stage_configs(cfg)  # everything validated before any work
    state = PartialState(cpu=configs["data"].generator.device == "cpu")
    main = state.is_main_process
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run / "config.yaml")
        for name, c in configs.items():
            if name == "train":
                for method, t in c.items():
                    save_resolved(t, run / f"config.train.{method}.yaml")
            else:
                save_resolved(c, run / f"config.{name}.yaml")
    timings: dict[str, float] = {}
    out: Path = run
    for stage in cfg.stages:
        t0 = time.time()
        if main:
            log(f"[main] stage {stage}")
        if stage == "data":
            from instructengine.images.config import IMAGE_STAGES
            from instructengine.images.pipeline import run_image_stages

            run_image_stages(configs["data"], IMAGE_STAGES, with_text=True, log=log)
        elif stage == "train":
            from instructengine.train.trainer import run_training

            for name, tcfg in configs["train"].items():
                result = run_training(tcfg)
                if main:
                    log(f"[train] {name} ({tcfg.method}): {result.steps} steps -> {result.final_path}"
                        + (" (already complete)" if result.skipped else ""))
        elif stage == "eval":  # every process: each generates and scores its slice
            from instructengine.evaluate.runner import evaluate

            evaluate(configs["eval"], log=log)
        elif main and stage == "report":
            from instructengine.evaluate.report import report

            written = report(configs["eval"], log=log)
            out = Path(written["markdown"])
            _fill_model_cards(configs, Path(written["json"]), log)
        elif main and stage == "review":
            _create_review(configs["review"], log)
        state.wait_for_everyone()
        timings[stage] = round(time.time() - t0, 1)
        if main:
            log(f"[main] stage {stage} took {timings[stage]:.0f} s")
    if main:
        log(f"[main] done in {sum(timings.values()):.0f} s: {timings}")
    return out


def _fill_model_cards(configs: dict[str, Any], report_json: Path, log) -> None:
    """Write each trained method's evaluation (means, vs the base model) into its model card."""
    import json

    from instructengine.train.card import add_evaluation

    data = json.loads(report_json.read_text())
    for name, tcfg in configs["train"].items():
        final = Path(tcfg.run_dir) / "train" / tcfg.output_name / "final"
        means = data.get("means", {}).get(name)
        if not means or not (final / "README.md").is_file():
            continue
        means = {k: v for k, v in means.items() if isinstance(v, (int, float))}
        note = (f"Means over {data.get('n_prompts')} prompts ({data.get('n_images')} images); base model "
                f"`{data.get('base')}`: {data.get('means', {}).get(data.get('base'), {})}. Full report: report.md of the run.")
        add_evaluation(final, means, benchmark=str(data.get("benchmark")), note=note)
        log(f"[report] model card of {name}: {final / 'README.md'}")


def _create_review(rcfg: Any, log) -> None:
    """Create the review study once; a re-run finds it and leaves it (and its votes) alone."""
    from instructengine.humaneval.study import create_study

    marker = Path(rcfg.study_dir) / "manifest.json"
    if marker.is_file():
        log(f"[review] study already created in {rcfg.study_dir} (serve: instructengine review serve "
            f"--config {Path(rcfg.study_dir).parent / 'config.review.yaml'})")
        return
    created = create_study(rcfg)
    log(f"[review] study {created.name!r}: {created.n_systems} systems, {created.n_comparisons} comparisons, "
        f"{created.n_tasks} tasks; tokens in {created.tokens_path}; serve it with `instructengine review serve "
        f"--config {Path(rcfg.study_dir).parent / 'config.review.yaml'}`")
