"""A tiny contrastive image-text model of ShapesWorld (transformers ``CLIPModel``).

It plays CLIP/BLIP in this world: best-of-N selection of candidates and an image-text metric.
Trained on fresh renders with in-batch negatives plus one hard negative caption per image (the
caption with one attribute changed), so it attends to counts, colours, shapes, sizes, breakage,
relations and style rather than only to the most visible colour.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from instructengine.config import Config
from instructengine.runs import share_files
from instructengine.shapes.pipeline import WEIGHTS_DIR
from instructengine.shapes.render import render
from instructengine.shapes.scene import (
    BACKGROUNDS, COLOURS, COUNTS, PALETTES, RELATIONS, SHAPES, SIZES, MAX_COUNT_IN_RELATION,
    Scene, SceneSampler,
)

DEFAULT_CLIP_DIR = WEIGHTS_DIR / "shapes-clip"


class ContrastiveConfig(Config):
    """Training of the tiny contrastive image-text model."""

    out_dir: Path = Field(Path("runs/shapes-clip"), description="output folder (model in <out_dir>/model)")
    seed: int = Field(0, description="seed of initialisation and data")
    steps: int = Field(800, ge=1, description="optimiser steps")
    batch_size: int = Field(128, ge=2, description="images per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (cosine decay)")
    hidden_size: int = Field(64, ge=16, description="width of both towers")
    layers: int = Field(4, ge=1, description="layers of the vision tower (text tower: 2)")
    patch_size: int = Field(4, ge=1, description="ViT patch side in pixels")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")


def perturb(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with exactly one stated attribute changed (a hard negative caption)."""
    options = ["count", "colour", "shape", "size", "intact"]
    if scene.relation:
        options.append("relation")
    if scene.palette:
        options.append("palette")
    if scene.background:
        options.append("background")
    for _ in range(100):
        what = options[rng.integers(len(options))]
        gi = int(rng.integers(len(scene.groups)))
        g = scene.groups[gi]
        try:
            if what == "relation":
                rel = [r for r in RELATIONS if r != scene.relation][rng.integers(3)]
                return replace(scene, relation=rel)
            if what == "palette":
                return replace(scene, palette=[p for p in PALETTES if p != scene.palette][0])
            if what == "background":
                return replace(scene, background=[b for b in BACKGROUNDS if b != scene.background][0])
            limit = MAX_COUNT_IN_RELATION if scene.relation else max(COUNTS)
            new = {
                "count": lambda: replace(g, count=int([c for c in COUNTS if c != g.count and c <= limit][
                    rng.integers(len([c for c in COUNTS if c != g.count and c <= limit]))])),
                "colour": lambda: replace(g, colour=[c for c in COLOURS if c != g.colour][rng.integers(5)]),
                "shape": lambda: replace(g, shape=[s for s in SHAPES if s != g.shape][rng.integers(2)]),
                "size": lambda: replace(g, size=[s for s in SIZES if s != g.size][0]),
                "intact": lambda: replace(g, intact=not g.intact),
            }[what]()
            groups = list(scene.groups)
            groups[gi] = new
            return replace(scene, groups=tuple(groups))
        except ValueError:
            continue  # e.g. a colour clash between the two groups: try another change
    raise RuntimeError(f"could not perturb {scene.caption!r}")


def build_model(cfg: ContrastiveConfig):
    from transformers import CLIPConfig, CLIPModel

    from instructengine.shapes.tokenizer import MAX_LENGTH, build_tokenizer

    tok = build_tokenizer()
    h = cfg.hidden_size
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=h, intermediate_size=2 * h, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(image_size=32, patch_size=cfg.patch_size, hidden_size=h, intermediate_size=2 * h,
                           num_hidden_layers=cfg.layers, num_attention_heads=4, num_channels=3),
        projection_dim=h,
    )
    return CLIPModel(config), tok


def to_pixels(images: Sequence | np.ndarray) -> torch.Tensor:
    """uint8 (B, 32, 32, 3) arrays or PIL images -> float (B, 3, 32, 32) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.uint8)[..., :3] for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _data(cfg: ContrastiveConfig, step: int):
    rng = np.random.default_rng([cfg.seed, 17, step])
    sampler = SceneSampler(split="train", rng=rng, p_relation=0.35, p_broken=0.25)
    scenes = [sampler.draw() for _ in range(cfg.batch_size)]
    imgs = np.stack([render(s, int(z)) for s, z in zip(scenes, rng.integers(0, 2**31 - 1, len(scenes)))])
    hard = [perturb(s, rng).caption for s in scenes]
    return [s.caption for s in scenes], hard, imgs


class ShapesClipScorer:
    """``score(images, prompts) -> np.ndarray`` of cosine similarities (raw, not x100)."""

    name = "shapes_clip"

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from transformers import CLIPModel, PreTrainedTokenizerFast

        path = Path(path) if path is not None else DEFAULT_CLIP_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no contrastive model at {str(path)!r}; train one with "
                                    "`instructengine shapes train-clip` or use the shipped default")
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        self.device = device

    @torch.no_grad()
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt")
        return F.normalize(_features(self.model.get_text_features(input_ids=ids.input_ids.to(self.device))), dim=-1)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        px = to_pixels(images).to(self.device)
        return F.normalize(_features(self.model.get_image_features(pixel_values=px)), dim=-1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Text-embedder protocol (L2-normalised rows), used by the taxonomy and entity filters."""
        return self.embed_text(texts).cpu().numpy()

    def score(self, images, prompts: Sequence[str]) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = []
        for i in range(0, len(prompts), 512):
            im = self.embed_images(images[i:i + 512])
            tx = self.embed_text(prompts[i:i + 512])
            out.append((im * tx).sum(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output object from get_*_features; 4.x returned the tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def train_contrastive(cfg: ContrastiveConfig, progress: bool = True) -> Path:
    """Train and save the model (transformers folder + tokenizer) to ``<out_dir>/model``."""
    from instructengine.config import save_resolved

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out / "config.yaml")
    model, tok = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    bar = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="train-clip", unit="step")
    log = open(out / "metrics.jsonl", "w")
    t0 = time.time()
    for step in bar:
        caps, hard, imgs = _data(cfg, step)
        ids = tok(caps + hard, padding="max_length", truncation=True, return_tensors="pt").input_ids
        txt = F.normalize(_features(model.get_text_features(input_ids=ids)), dim=-1)
        img = F.normalize(_features(model.get_image_features(pixel_values=to_pixels(imgs))), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (B, 2B): in-batch captions + hard negatives
        target = torch.arange(len(caps))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(caps)].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "elapsed_s": time.time() - t0}) + "\n")
            log.flush()
    log.close()
    path = out / "model"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    share_files(path)
    return path


def retrieval_accuracy(scorer: ShapesClipScorer, n: int = 500, seed: int = 123, pool: int = 100) -> dict:
    """Image-to-text retrieval on held-out renders: top-1 among ``pool`` random captions, and the
    share of images whose true caption beats a one-attribute perturbation of it."""
    rng = np.random.default_rng(seed)
    sampler = SceneSampler(split="any", rng=rng)
    scenes = [sampler.draw() for _ in range(n)]
    imgs = np.stack([render(s, 10_000 + i) for i, s in enumerate(scenes)])
    im = scorer.embed_images(imgs)
    top1 = []
    for i in range(0, n, pool):
        tx = scorer.embed_text([s.caption for s in scenes[i:i + pool]])
        top1 += list((im[i:i + pool] @ tx.T).argmax(1).numpy() == np.arange(len(tx)))
    true = scorer.score(imgs, [s.caption for s in scenes])
    hard = scorer.score(imgs, [perturb(s, rng).caption for s in scenes])
    return {"top1_of_%d" % pool: float(np.mean(top1)), "beats_hard_negative": float(np.mean(true > hard)), "n": n}


__all__ = ["ContrastiveConfig", "ShapesClipScorer", "train_contrastive", "retrieval_accuracy", "perturb"]
