"""Error shifts: how a trained U-Net moved the denoising errors of a preference dataset's
(instruction, image) combinations, relative to its reference (the model it started from).

For a cross-validation sample (x1, y1, x2, y2) the four combinations are the *matched* ones
(x1, y1), (x2, y2) -- the preferred images under their own instruction -- and the *mismatched*
ones (x1, y2), (x2, y1). With ``D(x, y) = policy error - reference error`` (per-sample MSE of the
training target, one noise and timestep shared by all models), a preference loss can raise its
margins in two ways: lower ``D`` on the matched combinations (fit the preferred images) or raise
it on the mismatched ones. Raising *both*, the mismatched more, also raises the margin: that is
likelihood displacement, and it makes the policy a worse denoiser of the very images it prefers.
This module measures it, with the trainer's own model adapters and :func:`combination_errors`,
for SD1.5, SDXL and ShapesWorld models alike::

    instructengine train shifts --config configs/train_shapes.yaml \\
        --unet cv_dpo=runs/demo/train/cv_dpo/final/unet --samples 256 --draws 4

Per model, averaged over samples (each sample's ``D`` averaged over ``draws`` noise draws first):

* ``ref_matched``: the reference's error on the matched combinations (the scale of the shifts);
* ``shift_matched`` / ``shift_mismatched``: mean ``D`` on matched / mismatched combinations;
  ``shift_matched_rel`` = shift_matched / ref_matched (+0.2: the preferred images are denoised
  20% worse than before training);
* ``cv_margin``: ``(D12 + D21) - (D11 + D22)``, the cross-validation margin (= the sum of both
  image triples' margins = the sum of both instruction triples' margins);
* ``image_triples_right``: share of samples where both image triples' margins are positive
  (y1 over y2 under x1, and y2 over y1 under x2); ``instruction_triples_right``: the same for
  the instruction triples (x1 over x2 for y1, x2 over x1 for y2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from instructengine.train.config import TrainConfig

__all__ = ["COLUMNS", "error_shifts", "format_shifts", "plot_shifts"]

#: the output columns of :func:`error_shifts` (besides ``model`` and ``samples``)
COLUMNS = ("ref_matched", "shift_matched", "shift_mismatched", "shift_matched_rel", "cv_margin",
           "image_triples_right", "instruction_triples_right")


def _draw_generator(seed: int, draw: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + draw * 10_007 + batch)


def error_shifts(cfg: TrainConfig, unets: dict[str, str | Path], samples: int = 256, draws: int = 4,
                 batch_size: int = 32, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per trained U-Net of ``unets`` (name -> path, see :func:`instructengine.train.models.load_trained_unet`) with the
    :data:`COLUMNS` measured on ``samples`` samples of ``cfg.data`` drawn at random (``seed``).

    The reference is ``cfg.model`` (the model the U-Nets were trained from); every model sees the
    same images, noise and timesteps (drawn per batch: the same ``seed`` and ``batch_size`` give the
    same numbers). Errors are computed in float32 on ``cfg.device`` with ``cfg.threads`` CPU threads.

    Raises:
        ValueError: no U-Net given, bad counts, or a dataset without usable samples.
    """
    from instructengine.train.data import ItemDataset, build_items, collate_items
    from instructengine.train.models import load_adapter, load_trained_unet
    from instructengine.train.steps import Encoder, combination_errors

    if not unets:
        raise ValueError("error_shifts needs at least one trained U-Net (name -> path)")
    for name, value in (("samples", samples), ("draws", draws), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    say = progress or (lambda s: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    items, _, _ = build_items("samples", "quad", cfg.data)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(items), size=min(samples, len(items)), replace=False).tolist())
    dataset = ItemDataset([items[i] for i in chosen], cfg.data, seed)
    batches = [collate_items([dataset[(i, 0)] for i in range(s, min(s + batch_size, len(dataset)))])
               for s in range(0, len(dataset), batch_size)]
    adapter = load_adapter(cfg.model).to(device, torch.float32, torch.float32)
    reference = adapter.unet.to(device).eval()
    encoder = Encoder(adapter)

    def errors(model: Any) -> np.ndarray:
        """(draws, samples, 4) errors in the quad layout's order x1y1, x1y2, x2y2, x2y1."""
        out = np.zeros((draws, len(dataset), 4))
        with torch.no_grad():
            for d in range(draws):
                row = 0
                for b, batch in enumerate(batches):
                    err, _ = combination_errors(adapter, encoder, model, None, batch, "quad", _draw_generator(seed, d, b))
                    out[d, row:row + len(err)] = err.float().cpu().numpy()
                    row += len(err)
        return out

    say(f"reference: {len(dataset)} samples x {draws} draws")
    ref = errors(reference)
    rows = []
    for name, path in unets.items():
        say(f"{name}: {path}")
        policy = load_trained_unet(Path(cfg.model.source()) / "unet", path).to(device).eval()
        D = (errors(policy) - ref).mean(axis=0)  # per sample, averaged over draws
        d11, d12, d22, d21 = D.T
        ref_matched = float(ref[..., [0, 2]].mean())
        shift_matched = float(((d11 + d22) / 2).mean())
        rows.append({
            "model": name, "samples": len(dataset), "ref_matched": ref_matched, "shift_matched": shift_matched,
            "shift_mismatched": float(((d12 + d21) / 2).mean()),
            "shift_matched_rel": shift_matched / ref_matched if ref_matched > 0 else float("nan"),
            "cv_margin": float(((d12 + d21) - (d11 + d22)).mean()),
            "image_triples_right": float(((d12 > d11) & (d21 > d22)).mean()),
            "instruction_triples_right": float(((d21 > d11) & (d12 > d22)).mean()),
        })
        del policy
    return pd.DataFrame(rows, columns=["model", "samples", *COLUMNS])


def format_shifts(df: pd.DataFrame) -> str:
    """Markdown table: errors and shifts x1000, shares in percent."""
    head = ["model", "samples", "ref error (matched) x1e3", "shift matched x1e3", "shift mismatched x1e3",
            "matched rel.", "CV margin x1e3", "image triples right", "instruction triples right"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.samples} | {1e3 * r.ref_matched:.2f} | {1e3 * r.shift_matched:+.3f} | "
            f"{1e3 * r.shift_mismatched:+.3f} | {100 * r.shift_matched_rel:+.1f}% | {1e3 * r.cv_margin:+.3f} | "
            f"{100 * r.image_triples_right:.1f}% | {100 * r.instruction_triples_right:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def plot_shifts(df: pd.DataFrame, path: str | Path) -> Path:
    """Two bar charts side by side, one bar per model: the preferred images' error shift relative to
    the reference (displacement, %) and the share of samples with both image triples right (%)."""
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()
    names = list(df.model)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(names) + 1.4), sharey=True)
    rel = 100 * df.shift_matched_rel.to_numpy()
    axes[0].barh(names, rel, color=["#c44e52" if v > 0 else "#4c72b0" for v in rel])
    axes[0].axvline(0, color="black", lw=0.8)
    axes[0].set_xlabel("preferred images' error vs reference (%)")
    axes[1].barh(names, 100 * df.image_triples_right.to_numpy(), color="#55a868")
    axes[1].set_xlabel("samples with both image triples right (%)")
    axes[0].invert_yaxis()
    fig.tight_layout()
    figure_png(fig, path)
    return Path(path)
