"""Fused vs naive cross-validation DPO step time on a ShapesWorld-sized model.

Fused: one policy U-Net call (with gradient) over the 4B (instruction, image) combinations
[x1,x1,x2,x2] x [y1,y2,y2,y1] and one reference call (no gradient) -- what the trainer does.
Naive: eight separate U-Net calls of B each (four policy, four reference).
Both then take the same loss, backward and AdamW step. Same noise, timesteps and result.

    python benchmarks/fused_vs_naive.py                       # CPU, fp32, 2 threads
    python benchmarks/fused_vs_naive.py --dtype bf16 --threads 2
    python benchmarks/fused_vs_naive.py --device cuda --dtype bf16

Model: pixel-space UNet2DConditionModel, block_out_channels (32, 64, 64), 2 layers per block,
cross-attention at 8x8 only, 32x32 images, CLIP text encoder of width 64 (the ShapesWorld
architecture; taken from ``instructengine.shapes.pipeline.build_components`` when present).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from contextlib import nullcontext

import torch


def build_model():
    try:
        from instructengine.shapes.pipeline import ShapesModelConfig, build_components

        comps = build_components(ShapesModelConfig())
        return comps, "instructengine.shapes.pipeline.build_components(ShapesModelConfig())"
    except ImportError:
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from instructengine.train.tiny import tiny_components

        tok = tiny_components("shapes")["tokenizer"]
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=2,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=8, norm_num_groups=8,
        )
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=8))
        sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        return {"unet": unet, "text_encoder": text, "tokenizer": tok, "scheduler": sched}, "equivalent built here"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="cross-validation samples per step (B)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--tiny", action="store_true", help="CI size: B=2, 1 timed step")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch, args.steps, args.threads = 2, 1, 1
    torch.set_num_threads(args.threads)

    from instructengine.train.losses import cross_validation_dpo_loss
    from instructengine.shapes.adapter import ShapesAdapter
    from instructengine.train.steps import Encoder, combination_errors

    comps, source = build_model()
    device = torch.device(args.device)
    adapter = ShapesAdapter(comps["unet"], comps["scheduler"], comps["text_encoder"], comps["tokenizer"])
    adapter.to(device, torch.float32, torch.float32)
    policy = adapter.unet.to(device).train()
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    enc = Encoder(adapter)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    g = torch.Generator().manual_seed(0)
    B = args.batch
    words = ["a red circle", "two blue squares", "a green triangle", "one yellow circle"]
    batch = {
        "texts": [[words[i % 4] for i in range(B)], [words[(i + 1) % 4] for i in range(B)]],
        "images": [[f"y1_{i}" for i in range(B)], [f"y2_{i}" for i in range(B)]],
        "pixels": [torch.rand(B, 3, 32, 32, generator=g) * 2 - 1, torch.rand(B, 3, 32, 32, generator=g) * 2 - 1],
        "micro": [None, None],
    }

    def step(fused: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        m, r = combination_errors(adapter, enc, policy, reference, batch, "quad", g, fused=fused, autocast=autocast)
        loss = cross_validation_dpo_loss(m, r, 2000.0).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"fused": [], "naive": []}
    for _ in range(1 if args.tiny else 2):
        step(True), step(False)
    for _ in range(args.steps):  # interleaved, so background load affects both alike
        times["fused"].append(step(True))
        times["naive"].append(step(False))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": source, "unet_params_M": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
        "batch_samples": B, "unet_calls": {"fused": 2, "naive": 8}, "device": str(device), "threads": args.threads,
        "autocast": args.dtype, "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "all_step_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "speedup_naive_over_fused": round(med["naive"] / med["fused"], 3),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
