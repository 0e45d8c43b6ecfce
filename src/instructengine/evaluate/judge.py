"""VLM pairwise judge (AGFSync's three questions), asked in both image orders to cancel position bias.

For each (prompt_index, seed) that two models share, the VLM sees the prompt and the two images
twice — (model, base) then (base, model) — and answers, each time, which image is better for
``general_preference``, ``prompt_alignment`` and ``visual_appeal`` ("1", "2" or "tie").

Per pair and question, each order casts a vote (+1 for the model, -1 for the base, 0 for a tie);
the sum decides: > 0 win, < 0 loss, 0 tie. A pair where an order got no valid answer is
"unanswered" (counted by reason), never decided from one order alone, since one order is exactly
what position bias distorts. The summary also reports how often the VLM chose the first image and
how often its two orders agreed.

Outputs in ``<run_dir>/judge/<benchmark>/<model>__vs__<base>/``: ``judgments.parquet`` (one row per
pair, order and question: the raw answer and the winner it implies), ``results.parquet`` (one row
per pair and question: win / tie / loss / unanswered), ``summary.json`` (rates, counts, client usage).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel

from instructengine.evaluate.config import EvalConfig, JudgeSpec
from instructengine.evaluate.storage import json_safe, model_dir, read_eval_folder

__all__ = ["QUESTIONS", "JudgeAnswer", "judge_models", "judge_pair"]

QUESTIONS = ("general_preference", "prompt_alignment", "visual_appeal")
Choice = Literal["1", "2", "tie"]


class JudgeAnswer(BaseModel):
    schema_name: ClassVar[str] = "pairwise_judgement"
    general_preference: Choice
    prompt_alignment: Choice
    visual_appeal: Choice


def _winner(answer: str, order: str) -> str:
    """'a' (the model), 'b' (the base) or 'tie', from an answer given with images in ``order``."""
    if answer == "tie":
        return "tie"
    first = order[0]  # "ab": image 1 is the model's
    return first if answer == "1" else ("b" if first == "a" else "a")


def _load_image(path: Path, size: int):
    from PIL import Image

    from instructengine.evaluate.vqa import _resize

    with Image.open(path) as im:
        return _resize(im.convert("RGB"), size)


def judge_pair(folder_a: str | Path, folder_b: str | Path, spec: JudgeSpec, out_dir: str | Path,
               run_dir: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Judge model A (``folder_a``) against base B on their shared (prompt_index, seed) pairs.

    Raises:
        ValueError: the folders hold different prompts or share no image.
        instructengine.llm.errors.PermanentLLMError: the VLM server rejected the requests.
    """
    import pandas as pd

    from instructengine.runs import atomic_write_json, atomic_write_parquet
    from instructengine.evaluate.vqa import _llm_config

    a, b = read_eval_folder(folder_a), read_eval_folder(folder_b)
    pa = dict(zip(a.prompts["prompt_index"].astype(int), a.prompts["prompt"]))
    pb = dict(zip(b.prompts["prompt_index"].astype(int), b.prompts["prompt"]))
    clash = sorted(i for i in set(pa) & set(pb) if pa[i] != pb[i])
    if clash:
        raise ValueError(f"{a.model!r} and {b.model!r} have different prompts at prompt_index {clash[:5]}")
    paths_a = dict(zip(zip(a.images["prompt_index"].astype(int), a.images["seed"].astype(int)), a.images["path"]))
    paths_b = dict(zip(zip(b.images["prompt_index"].astype(int), b.images["seed"].astype(int)), b.images["path"]))
    keys = sorted(set(paths_a) & set(paths_b))
    if spec.max_pairs is not None:
        keys = keys[: spec.max_pairs]
    if not keys:
        raise ValueError(f"{a.model!r} and {b.model!r} share no (prompt_index, seed) image")
    cfg = _llm_config(spec.llm, "judge.llm")
    log(f"[judge] {a.model} vs {b.model}: {len(keys)} pairs x 2 orders, VLM {cfg.model}")
    dropped: Counter[str] = Counter()

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm import build_client
        from instructengine.llm.messages import user_message

        rows: list[dict[str, Any]] = []
        async with build_client(cfg, run_dir) as client:

            async def one(key: tuple[int, int], order: str) -> None:
                img_a = _load_image(a.path / paths_a[key], spec.image_size)
                img_b = _load_image(b.path / paths_b[key], spec.image_size)
                images = [img_a, img_b] if order == "ab" else [img_b, img_a]
                text = render("judge_pairwise", cfg.prompts_dir, prompt=pa[key[0]])
                try:
                    ans = await client.complete_json([user_message(text, images)], JudgeAnswer, seed=0)
                except DropItem as err:
                    dropped[f"judge:{err.reason}"] += 1
                    return
                for q in QUESTIONS:
                    raw = getattr(ans, q)
                    rows.append({"prompt_index": key[0], "seed": key[1], "order": order, "question": q,
                                 "answer": raw, "winner": _winner(raw, order)})

            await asyncio.gather(*(one(k, o) for k in keys for o in ("ab", "ba")))
            return rows, client.usage.snapshot(), client.describe()

    rows, usage, described = asyncio.run(run())
    judgments = pd.DataFrame(rows, columns=["prompt_index", "seed", "order", "question", "answer", "winner"])
    judgments = judgments.sort_values(["prompt_index", "seed", "question", "order"]).reset_index(drop=True)
    vote = {"a": 1, "b": -1, "tie": 0}
    results = []
    for key in keys:
        sub = judgments[(judgments["prompt_index"] == key[0]) & (judgments["seed"] == key[1])]
        for q in QUESTIONS:
            votes = sub[sub["question"] == q]
            if set(votes["order"]) != {"ab", "ba"}:
                outcome = "unanswered"
            else:
                s = sum(vote[w] for w in votes["winner"])
                outcome = "win" if s > 0 else ("loss" if s < 0 else "tie")
            results.append({"prompt_index": key[0], "seed": key[1], "question": q, "outcome": outcome})
    results_df = pd.DataFrame(results)
    summary: dict[str, Any] = {"model": a.model, "base": b.model, "pairs": len(keys), "questions": {}}
    for q in QUESTIONS:
        c = Counter(results_df.loc[results_df["question"] == q, "outcome"])
        n = c["win"] + c["tie"] + c["loss"]
        summary["questions"][q] = {
            "win": c["win"] / n if n else float("nan"), "tie": c["tie"] / n if n else float("nan"),
            "loss": c["loss"] / n if n else float("nan"), "pairs": n, "unanswered": c["unanswered"],
        }
    if len(judgments):
        decided = judgments[judgments["answer"] != "tie"]
        both = judgments.pivot_table(index=["prompt_index", "seed", "question"], columns="order", values="winner", aggfunc="first").dropna()
        summary["position"] = {
            "first_image_chosen": float((decided["answer"] == "1").mean()) if len(decided) else None,
            "orders_agree": float((both["ab"] == both["ba"]).mean()) if len(both) else None,
        }
    summary.update(dropped=dict(dropped), usage=usage, llm=described)
    out = Path(out_dir)
    atomic_write_parquet(out / "judgments.parquet", judgments)
    atomic_write_parquet(out / "results.parquet", results_df)
    atomic_write_json(out / "summary.json", json_safe(summary))
    return summary


def judge_models(cfg: EvalConfig, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Judge every model of ``cfg`` against the report's base model (default: the first)."""
    names = [m.name for m in cfg.models]
    base = cfg.report.base or names[0]
    bench = cfg.benchmark.name
    out = {}
    for m in names:
        if m == base:
            continue
        out[m] = judge_pair(model_dir(cfg.run_dir, m, bench), model_dir(cfg.run_dir, base, bench), cfg.judge,
                            Path(cfg.run_dir) / "judge" / bench / f"{m}__vs__{base}", cfg.run_dir, log)
    return out
