"""The real bundle in miniature for the paper configs: every weight the configs name, as a tiny random
model in its official on-disk layout, a scripted OpenAI-compatible VLM for every request the run makes,
and the command-line overrides that point ``configs/{sd15,sdxl}_instructengine.yaml`` at them.

The overrides only say where the weights and the server are and shrink sizes; everything else is
the paper configs as shipped. One substitution is forced by the machine: AGFSync's VILA-R is a
TensorFlow SavedModel, so its term uses ``preset_aesthetic: laion`` (the LAION predictor, as the
config's comment says).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

_TESTS = Path(__file__).resolve().parents[1]
for sub in ("server", "evaluate", "images"):
    if str(_TESTS / sub) not in sys.path:
        sys.path.insert(0, str(_TESTS / sub))

import tiny  # noqa: E402  (tests/evaluate/tiny.py: the scorers' official layouts)
from scripted_server import schema_name  # noqa: E402
from text_responder import TextStageResponder  # noqa: E402

from instructengine.train.tiny import save_model, tiny_components  # noqa: E402


def build_weights(root: Path) -> dict[str, Path]:
    """Write every model the paper configs load; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    p: dict[str, Path] = {}
    for kind in ("sd15", "sdxl"):
        p[kind] = save_model(kind, tiny_components(kind, seed=1), root / kind)
    p["clip"] = root / "clip"  # transformers CLIP folder: PickScore, CLIP score, aesthetic backbone, text filter
    tiny.write_tiny_clip(p["clip"], seed=2)
    p["aesthetic_head"] = root / "sac+logos+ava1-l14-linearMSE.pth"
    tiny.write_reward_mlp(p["aesthetic_head"], input_size=8, seed=3)
    p["clip_tok"] = root / "clip_tok"
    vocab, _ = tiny.write_clip_tokenizer(p["clip_tok"])
    p["hpsv2"] = root / "HPS_v2_compressed.pt"
    torch.save({"state_dict": tiny.open_clip_state_dict(vocab, seed=4)}, p["hpsv2"])
    p["bert"] = root / "bert"
    bert_vocab = tiny.write_bert_tokenizer(p["bert"])
    p["med_config"] = root / "med_config.json"
    tiny.write_med_config(p["med_config"], bert_vocab)
    p["blip"] = root / "model_large.pth"
    torch.save({"model": tiny.blip_state_dict(bert_vocab, seed=5)}, p["blip"])
    ir = tiny.blip_state_dict(bert_vocab, seed=6, prefix="blip.")
    ir.update(tiny.write_reward_mlp(None, input_size=16, seed=7, prefix="mlp."))
    p["imagereward"] = root / "ImageReward.pt"
    torch.save(ir, p["imagereward"])
    return p


def _llm(prefix: str, base_url: str) -> list[str]:
    return [f"{prefix}.base_url={base_url}", f"{prefix}.model=scripted-vlm", f"{prefix}.api_key_env=IE_TEST_KEY_UNSET",
            f"{prefix}.concurrency=8", f"{prefix}.timeout_s=20", f"{prefix}.max_retries=2",
            f"{prefix}.backoff_base_s=0.01", f"{prefix}.backoff_max_s=0.05"]


def paper_overrides(kind: str, w: dict[str, Path], base_url: str, run_dir: Path) -> list[str]:
    """Command-line overrides of ``configs/<kind>_instructengine.yaml`` for the tiny bundle."""
    base = w[kind]
    blip = {"checkpoint": w["blip"], "med_config": w["med_config"], "tokenizer": w["bert"]}
    blip_opts = "{" + ", ".join(f"{k}: {v}" for k, v in blip.items()) + "}"
    clip_opts = f"{{model: {w['clip']}}}"
    hps_opts = f"{{checkpoint: {w['hpsv2']}, tokenizer: {w['clip_tok']}, vision_heads: 2, text_heads: 2}}"
    aes_opts = f"{{clip_model: {w['clip']}, head: {w['aesthetic_head']}}}"
    cpu = ["device=cpu", "dtype=float32"]
    out = [f"run_dir={run_dir}"]
    # data: the LLM/VLM endpoint, the CLIP text filter, SDXL candidates, BLIP best-of-N, baselines
    out += _llm("data.llm", base_url)
    out += [f"data.embedder.model={w['clip']}",
            "data.taxonomy.n_themes=3", "data.taxonomy.theme_samples=1", "data.taxonomy.subtopics_per_theme=2",
            "data.taxonomy.subtopic_samples=1", "data.taxonomy.axes=[theme, style]",
            "data.entities.per_subtopic=3", "data.pairs.dimensions_per_entity=1",
            f"data.generator.model={w['sdxl']}", "data.generator.dtype=float32", "data.generator.device=cpu",
            "data.generator.height=16", "data.generator.width=16", "data.generator.num_inference_steps=2",
            "data.generator.local_files_only=true",
            "data.candidates.n_candidates=2", "data.candidates.max_pairs=8", "data.candidates.instructions_per_call=2",
            f"data.select.scorer.options={blip_opts}", *[f"data.select.scorer.{c}" for c in cpu],
            "data.judge.concurrency=4",
            f"data.baselines.hpsv2.scorers.0.options={hps_opts}", *[f"data.baselines.hpsv2.scorers.0.{c}" for c in cpu]]
    for name in ("agfsync", "agfsync_code"):
        out += [f"data.baselines.{name}.preset_aesthetic=laion",
                f"data.baselines.{name}.scorers.vila.options={aes_opts}", f"data.baselines.{name}.scorers.vila.kind=aesthetic",
                f"data.baselines.{name}.scorers.clip.options={clip_opts}", *[f"data.baselines.{name}.scorers.clip.{c}" for c in cpu]]
    out += [f"data.baselines.agfsync.scorers.vqa.options.llm.{o.split('.', 1)[1]}" for o in _llm("x", base_url)]
    # training: the base weights, CPU precision, two steps per method
    out += [f"train.model.path={base}", "train.mixed_precision='no'", "train.data.resolution=16", "train.data.num_workers=0",
            "train.batch_size=2", "train.micro_batch_size=2", "train.max_steps=2", "train.checkpoint.every_n_steps=1",
            "train.threads=1", "train.tensorboard=false"]
    if kind == "sdxl":
        out += ["train.model.vae_path=null"]
    # evaluation: the base weights, the six scorers' weights, the VLM judge's endpoint
    model = "eval.models.0"
    out += [f"{model}.model={base}", f"{model}.dtype=float32", f"{model}.num_inference_steps=2",
            f"{model}.local_files_only=true", "eval.device=cpu", "eval.benchmark.limit=4", "eval.images_per_prompt=1",
            "eval.batch_size=4", "eval.report.bootstrap_samples=50", "eval.report.grid_prompts=2",
            f"eval.scorers.pickscore.options={{model: {w['clip']}, processor: {w['clip']}}}",
            f"eval.scorers.imagereward.options={blip_opts.replace('checkpoint: ' + str(w['blip']), 'checkpoint: ' + str(w['imagereward']))}",
            f"eval.scorers.hpsv2.options={hps_opts}", f"eval.scorers.clip.options={clip_opts}",
            f"eval.scorers.blip.options={blip_opts}", f"eval.scorers.aesthetic.options={aes_opts}"]
    out += _llm("eval.judge.llm", base_url)
    out += ["review.max_prompts=4"]
    return out


def _images_in(body: dict[str, Any]) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for msg in body["messages"]:
        if isinstance(msg.get("content"), list):
            for part in msg["content"]:
                if part.get("type") == "image_url":
                    png = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    out.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64))
    return out


def _bit(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class PaperVLM:
    """Answers every request of the paper's run: text stages (taxonomy, entities, pairs), the image judge,
    AGFSync's VQA questions and answers, and the pairwise evaluation judge. Verdicts are derived from
    the image bytes (a hash), so they are deterministic and some are negative. ``calls`` counts
    requests per schema."""

    def __init__(self) -> None:
        self.text = TextStageResponder()
        self.calls: dict[str, int] = {}

    def __call__(self, body: dict[str, Any]) -> Any:
        name = schema_name(body)
        self.calls[name] = self.calls.get(name, 0) + 1
        images = _images_in(body)
        if name == "image_judge":
            ok = _bit(images[0].sum()) % 5 != 0
            return {"matches": ok, "reason": "looks right" if ok else "the image does not show it"}
        if name == "vqa_questions_agfsync":
            # fewer than the 15 asked for (kept all the same, as AGFSync keeps what it gets): a shorter run
            qs = ["Is there an object?", f"Is detail {body.get('seed')} visible?"]
            return [{"question_id": j + 1, "question": q, "answer": "yes", "element_type": "object",
                     "element": "thing", "flag": 1} for j, q in enumerate(qs)]
        if name == "vqa_answer_text":
            q = re.search(r"Question: (.*?) Choices", body["messages"][-1]["content"][0]["text"]).group(1)
            return {"answer": "yes" if _bit(q, images[0].mean()) % 2 else "no"}
        if name == "pairwise_judgement":
            a, b = (im.mean() for im in images[:2])
            first = "1" if a >= b else "2"
            return {"general_preference": first, "prompt_alignment": "tie", "visual_appeal": first}
        return self.text(body)
