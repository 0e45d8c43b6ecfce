"""The model card of a trained output: ``<run>/train/<name>/final/README.md``.

Written with ``huggingface_hub.ModelCard`` / ``ModelCardData``, so the folder can be pushed to the
Hub as it is (``huggingface_hub.upload_folder``) and ``ModelCard.load`` reads it back. YAML front
matter: ``base_model`` (the Hub id; left out when the base is a local folder), ``library_name:
diffusers``, ``pipeline_tag: text-to-image``, ``tags`` (text-to-image, diffusion-dpo,
instructengine, the method, lora), ``license`` and ``datasets`` (``card`` section of the config).
Body: the method and its loss, the data (folder name, samples read and used), the settings (lr,
batch, steps, precision, seed, ...), the last logged training metrics, and an evaluation section
that :func:`add_evaluation` fills in once the output has been evaluated. No machine path is
written: local folders appear by name only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["add_evaluation", "base_model_id", "card_license", "write_model_card"]

#: licenses of the default base models (model.path null); others: ``card.license`` or "other"
KNOWN_LICENSES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
EVAL_HEADING = "## Evaluation"


def _is_local(ref: str | None) -> bool:
    return bool(ref) and (Path(ref).expanduser().exists() or Path(ref).is_absolute() or ref.startswith("."))


def base_model_id(cfg: Any) -> str | None:
    """The Hub id of the base model, or None when it is a local folder (not a Hub reference)."""
    ref = cfg.model.source() if cfg.model.kind in ("sd15", "sdxl") or cfg.model.path else None
    return None if ref is None or _is_local(ref) else ref


def card_license(cfg: Any) -> str:
    """``card.license``, else the known license of the base model, else ``"other"``."""
    return cfg.card.license or KNOWN_LICENSES.get(base_model_id(cfg) or "", "other")


def _name(ref: str | None) -> str:
    return "-" if not ref else (Path(ref).name if _is_local(ref) else ref)


def _last_metrics(metrics_path: Path) -> dict[str, Any]:
    if not metrics_path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in metrics_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            last = rec
    return last


def write_model_card(folder: Path, cfg: Any, *, weights: str, steps: int, items_seen: int, data_in: int | None,
                     data_used: int | None, metrics_path: Path | None = None) -> Path:
    """Write ``folder/README.md``: the card of the weights at ``folder/<weights>``.

    ``data_in`` / ``data_used`` are the training items read from ``data.path`` and kept (the
    trainer's manifest counts). Returns the card's path.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from instructengine.runs import atomic_write_text
    from instructengine.train.losses import LOSSES
    from instructengine.train.methods import METHODS

    method = METHODS[cfg.method]
    tags = ["text-to-image", "diffusion-dpo", "instructengine", cfg.method.replace("_", "-"), cfg.model.kind]
    if cfg.lora.enabled:
        tags.append("lora")
    data = ModelCardData(
        base_model=base_model_id(cfg),
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=card_license(cfg),
        tags=list(dict.fromkeys(tags)),
        datasets=list(cfg.card.datasets) or None,
    )
    loss = f"`{method.loss}` (layout `{LOSSES[method.loss].layout}`)" if method.loss else "reward back-propagation"
    how = "LoRA adapters (`pytorch_lora_weights.safetensors`)" if cfg.lora.enabled else "The full U-Net (`unet/`)"
    settings = {
        "method": cfg.method,
        "loss": method.loss or f"reward back-propagation ({cfg.refl.reward})",
        "loss beta": cfg.loss.beta if method.loss else "-",
        "learning rate": cfg.optim.lr,
        "lr schedule": cfg.optim.lr_schedule,
        "warm-up steps": cfg.optim.warmup_steps,
        "batch size (items per optimizer step)": cfg.batch_size,
        "micro-batch size": cfg.micro_batch_size,
        "optimizer steps": steps,
        "items seen": items_seen,
        "mixed precision": cfg.mixed_precision,
        "saved dtype": cfg.save_dtype,
        "LoRA rank": cfg.lora.rank if cfg.lora.enabled else "full fine-tuning",
        "resolution": cfg.data.resolution,
        "seed": cfg.seed,
    }
    lines = [
        f"# {cfg.output_name}: {cfg.model.kind} aligned with {cfg.method} (InstructEngine)",
        "",
        f"{how} of `{_name(cfg.model.source() if cfg.model.kind in ('sd15', 'sdxl') or cfg.model.path else None)}` "
        f"trained with **{cfg.method}**: {method.summary}. Loss: {loss}. Trained by the InstructEngine toolkit "
        "(instruction-driven text-to-image alignment).",
        "",
        "## Data",
        "",
        f"- source: `{cfg.data.source}` layout of the data folder `{_name(cfg.data.path)}`"
        + (f" (Hub: {', '.join(cfg.card.datasets)})" if cfg.card.datasets else ""),
        f"- training items read: {data_in if data_in is not None else '-'}; used: {data_used if data_used is not None else '-'}"
        f" (an item is what the method trains on: layout `{method.layout}`)",
        "",
        "## Training settings",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in settings.items()],
    ]
    last = _last_metrics(metrics_path) if metrics_path is not None else {}
    if last:
        lines += ["", f"## Training metrics (last logged step, {last.get('step')})", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in last.items() if k != "step"]
    lines += [
        "",
        EVAL_HEADING,
        "",
        "Not evaluated yet (`instructengine eval` / the main job fill this section in).",
        "",
        "## Use",
        "",
        "```python",
        *(_use_lines(cfg, weights)),
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return atomic_write_text(Path(folder) / "README.md", str(card))


def _use_lines(cfg: Any, weights: str) -> list[str]:
    base = base_model_id(cfg) or "<base model folder or Hub id>"
    pipe = "StableDiffusionXLPipeline" if cfg.model.kind == "sdxl" else "StableDiffusionPipeline"
    if cfg.lora.enabled:
        return [f"from diffusers import {pipe}", f"pipe = {pipe}.from_pretrained({base!r})",
                "pipe.load_lora_weights('<this folder>')"]
    return ["from diffusers import UNet2DConditionModel, " + pipe,
            f"unet = UNet2DConditionModel.from_pretrained('<this folder>/{weights}')",
            f"pipe = {pipe}.from_pretrained({base!r}, unet=unet)"]


def add_evaluation(folder: str | Path, metrics: dict[str, float], *, benchmark: str, note: str = "") -> Path:
    """Replace the card's evaluation section with ``metrics`` (name -> value) on ``benchmark`` and
    record them in the front matter's ``instructengine_eval`` field (benchmark -> metric -> value).

    Raises:
        FileNotFoundError: ``folder`` has no README.md (the output was not written by the trainer).
    """
    from huggingface_hub import ModelCard

    from instructengine.runs import atomic_write_text

    path = Path(folder) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}; it is written with the trained weights")
    card = ModelCard.load(path)
    evals = dict(card.data.to_dict().get("instructengine_eval") or {})
    evals[benchmark] = {k: float(v) for k, v in metrics.items()}
    card.data.instructengine_eval = evals
    section = [EVAL_HEADING, ""]
    for bench, values in evals.items():
        section += [f"### {bench}", "", "| metric | value |", "|---|---:|"]
        section += [f"| {k} | {v:.4f} |" for k, v in values.items()] + [""]
    if note:
        section += [note, ""]
    body = card.content.split("\n---\n", 1)[1] if card.content.startswith("---") else card.content
    head, sep, tail = body.partition(EVAL_HEADING)
    if sep:
        rest = tail.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) == 2 else ""
    text = f"---\n{card.data.to_yaml()}\n---\n" + head + "\n".join(section) + tail
    return atomic_write_text(path, str(ModelCard(text)))
