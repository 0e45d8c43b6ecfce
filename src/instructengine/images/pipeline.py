"""The image stages in one call (and, optionally, the text stages before them).

Under ``accelerate launch`` every process runs :func:`run_image_stages`: the candidates stage is
sharded across processes; the text stages and the later image stages (cheap next to generation)
run on the main process only, the others wait at a barrier (text) or return after candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from instructengine.images.config import IMAGE_STAGES, DataPipelineConfig
from instructengine.runs import Manifest

__all__ = ["run_image_stages"]


def run_image_stages(
    cfg: DataPipelineConfig,
    stages: Sequence[str] = IMAGE_STAGES,
    *,
    with_text: bool = False,
    generator: Any = None,
    select_scorer: Any = None,
    judge: Any = None,
    baseline_scorers: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Manifest]:
    """Run ``stages`` (a subset of :data:`IMAGE_STAGES`, in pipeline order); with ``with_text`` the
    text stages (taxonomy, entities, pairs) run first. Returns the manifests this process wrote.

    Raises:
        ValueError: an unknown stage name.
    """
    from accelerate import PartialState

    from instructengine.config import save_resolved

    from instructengine.errors import require_devices

    unknown = [s for s in stages if s not in IMAGE_STAGES]
    if unknown:
        raise ValueError(f"unknown image stage(s) {unknown}; choose from {list(IMAGE_STAGES)}")
    # refuse a CUDA device on a machine without one before any stage starts (torch would fail mid-run)
    sections = {"candidates": "generator", "select": "select", "baselines": "baselines"}
    if with_text and cfg.embedder.kind == "clip":
        require_devices(cfg.embedder, "embedder")
    for s in stages:
        if s in sections:
            require_devices(getattr(cfg, sections[s]), sections[s])
    state = PartialState(cpu=cfg.generator.device == "cpu")  # see run_candidates
    manifests: dict[str, Manifest] = {}
    if state.is_main_process:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, Path(cfg.run_dir) / "data_pipeline.yaml")
    if with_text:
        if state.is_main_process:
            from instructengine.text_pipeline import run_text_stages

            text = run_text_stages(cfg)
            manifests.update(text)
            for name, m in text.items():
                log(f"[{name}] in {m.count_in} -> out {m.count_out}, dropped {dict(m.dropped)}")
        state.wait_for_everyone()
    if "candidates" in stages:
        from instructengine.images.candidates import run_candidates

        m = run_candidates(cfg, generator=generator, log=log)
        if m is not None:
            manifests["candidates"] = m
            log(_line("candidates", m))
    if not state.is_main_process:
        return manifests
    if "select" in stages:
        from instructengine.images.select import run_select

        manifests["select"] = run_select(cfg, select_scorer, log)
        log(_line("select", manifests["select"]))
    if "judge" in stages:
        from instructengine.images.judge import run_judge

        manifests["judge"] = run_judge(cfg, judge, log)
        log(_line("judge", manifests["judge"]))
    if "dataset" in stages:
        from instructengine.images.dataset import run_dataset

        manifests["dataset"] = run_dataset(cfg, log)
        log(_line("dataset", manifests["dataset"]))
    if "baselines" in stages:
        from instructengine.images.baselines import run_baselines

        for name, m in run_baselines(cfg, baseline_scorers, log).items():
            manifests[f"baselines/{name}"] = m
            log(_line(f"baselines/{name}", m))
    return manifests


def _line(name: str, m: Manifest) -> str:
    drops = ", ".join(f"{k}: {v}" for k, v in m.dropped.most_common(6))
    return f"[{name}] in {m.count_in} -> out {m.count_out}; dropped {sum(m.dropped.values())}" + (f" ({drops})" if drops else "")
