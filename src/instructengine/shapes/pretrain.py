"""Pre-training of the ShapesWorld text-to-image model on fresh renders (reproducible from a seed).

Each step draws a batch of training-split scenes (never a held-out ShapesBench combination) and
renders them, both from ``(seed, step)``, so the data stream is a pure function of the config.
The U-Net and text encoder train together with the epsilon objective; an EMA copy is what ships.
A checkpoint is written atomically every ``checkpoint_every`` steps and a killed run resumes.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from instructengine.config import Config
from instructengine.runs import atomic_write_bytes, share_files
from instructengine.shapes.pipeline import ShapesModelConfig, ShapesPipeline, build_components
from instructengine.shapes.render import render
from instructengine.shapes.scene import SceneSampler


class PretrainConfig(Config):
    """Pre-training of the tiny text-to-image model."""

    out_dir: Path = Field(Path("runs/shapes-pretrain"), description="where checkpoints and the pipeline go")
    seed: int = Field(0, description="seed of initialisation and of the data stream")
    steps: int = Field(4000, ge=1, description="optimiser steps")
    max_minutes: float | None = Field(None, gt=0, description="stop early after this much wall time")
    batch_size: int = Field(64, ge=1, description="images per step (fresh renders)")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    ema_decay: float = Field(0.998, gt=0, lt=1, description="EMA decay (with 1+n/10+n warm-up)")
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="share of empty captions (for CFG)")
    bf16: bool = Field(True, description="bfloat16 autocast on CPU (about 1.5x faster here)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    checkpoint_every: int = Field(250, ge=1, description="steps between resumable checkpoints")
    log_every: int = Field(50, ge=1, description="steps between log lines in metrics.jsonl")
    p_relation: float = Field(0.3, ge=0, le=1, description="share of two-group captions")
    p_broken: float = Field(0.2, ge=0, le=1, description="chance a group is broken")
    model: ShapesModelConfig = Field(default_factory=ShapesModelConfig, description="architecture")


def _batch(cfg: PretrainConfig, step: int) -> tuple[list[str], torch.Tensor]:
    rng = np.random.default_rng([cfg.seed, step])
    sampler = SceneSampler(split="train", p_relation=cfg.p_relation, p_broken=cfg.p_broken, rng=rng)
    scenes = [sampler.draw() for _ in range(cfg.batch_size)]
    seeds = rng.integers(0, 2**31 - 1, cfg.batch_size)
    imgs = np.stack([render(s, int(z)) for s, z in zip(scenes, seeds)])
    captions = [("" if rng.random() < cfg.caption_dropout else s.caption) for s in scenes]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return captions, x


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def pretrain(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Train (or resume) and save the EMA pipeline to ``<out_dir>/pipeline``; returns that path."""
    from instructengine.config import save_resolved

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml")
    torch.manual_seed(cfg.seed)
    comps = build_components(cfg.model)
    unet, te, tok, sched = comps["unet"], comps["text_encoder"], comps["tokenizer"], comps["scheduler"]
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / max(cfg.warmup_steps, 1))  # noqa: E731
    ema = [p.detach().clone() for p in params]
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema = state["ema"]
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
    alphas = sched.alphas_cumprod
    pipe_tok = ShapesPipeline(unet, te, tok, sched)
    t0 = time.time()
    log = open(out / "metrics.jsonl", "a")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", unit="step")
    losses = []
    while step < cfg.steps:
        if cfg.max_minutes and (time.time() - t0) / 60 > cfg.max_minutes:
            break
        captions, x0 = _batch(cfg, step)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = pipe_tok.tokenize(captions)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            emb = te(ids).last_hidden_state
            pred = unet(xt, t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if bar:
            bar.update(1)
        if step % cfg.log_every == 0:
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr_at(step - 1),
                   "elapsed_s": round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if bar:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            losses = []
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            atomic_write_bytes(ckpt, _state_bytes({
                "unet": unet.state_dict(), "text_encoder": te.state_dict(), "optimizer": opt.state_dict(),
                "ema": ema, "step": step, "torch_rng": torch.get_rng_state(),
            }))
    if bar:
        bar.close()
    log.close()
    return save_ema_pipeline(cfg, ema, out / "pipeline")


def save_ema_pipeline(cfg: PretrainConfig, ema: list[torch.Tensor], path: Path) -> Path:
    comps = build_components(cfg.model)
    params = list(comps["unet"].parameters()) + list(comps["text_encoder"].parameters())
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    pipe = ShapesPipeline(**comps)
    tmp = path.with_name(path.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    share_files(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load_ema_from_checkpoint(cfg: PretrainConfig) -> list[torch.Tensor]:
    return torch.load(Path(cfg.out_dir) / "checkpoint.pt", weights_only=False)["ema"]


__all__ = ["PretrainConfig", "pretrain", "save_ema_pipeline", "load_ema_from_checkpoint"]
