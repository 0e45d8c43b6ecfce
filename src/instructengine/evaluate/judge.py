"""VLM pairwise judge of model A against base B, under one of two protocols (``judge.protocol``).

``instructengine`` (ours, the default). For each (prompt_index, seed) that two models share, the
VLM sees the prompt and the two images twice - (model, base) then (base, model) - and answers, in
one request each time, which image is better for ``general_preference``, ``prompt_alignment`` and
``visual_appeal`` ("1", "2" or "tie"; our wording). Per pair and question, each order casts a vote
(+1 for the model, -1 for the base, 0 for a tie); the sum decides: > 0 win, < 0 loss, 0 tie. A pair
where an order got no valid answer is "unanswered" (counted by reason), never decided from one
order alone, since one order is exactly what position bias distorts. Win rate = win / (win + tie +
loss). Not comparable with AGFSync's numbers.

``agfsync`` (AGFSync's GPT-4V evaluation): three separate requests per pair, one per question -
"Which image do you prefer?", "Which image better fits the text description?", "Disregarding the
prompt, which image is more visually appealing?" - each a forced choice between image A and image B
with a reason (no tie). Each request shows one image order, drawn per (pair, question) from a hash
of (prompt_index, seed, question), so the model's image is first about half the time. Win rate =
win / (win + loss) over the answered comparisons; unanswered ones are counted apart.

The summary names its protocol and win-rate definition, and reports how often the VLM chose the
first image (and, for ours, how often its two orders agreed).

Outputs in ``<run_dir>/judge/<benchmark>/<model>__vs__<base>/``: ``judgments.parquet`` (one row per
pair, order and question: the raw answer, the winner it implies, and for agfsync the reason),
``results.parquet`` (one row per pair and question: win / tie / loss / unanswered), ``summary.json``
(protocol, rates, counts, client usage).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, Field

from instructengine.evaluate.config import EvalConfig, JudgeSpec
from instructengine.evaluate.storage import json_safe, model_dir, read_eval_folder
from instructengine.progress import Progress

__all__ = ["AGFSYNC_QUESTIONS", "QUESTIONS", "AgfsyncJudgeAnswer", "JudgeAnswer", "agfsync_order", "judge_models", "judge_pair"]

QUESTIONS = ("general_preference", "prompt_alignment", "visual_appeal")
#: AGFSync's three GPT-4V questions, asked one per request
AGFSYNC_QUESTIONS = {
    "general_preference": "Which image do you prefer?",
    "prompt_alignment": "Which image better fits the text description?",
    "visual_appeal": "Disregarding the prompt, which image is more visually appealing?",
}
WIN_RATE = {
    "instructengine": "win / (win + tie + loss); both image orders per pair, votes summed, ties allowed",
    "agfsync": "win / (win + loss); forced A/B choice with a reason, one request per question, one image order per comparison",
}
Choice = Literal["1", "2", "tie"]


class JudgeAnswer(BaseModel):
    schema_name: ClassVar[str] = "pairwise_judgement"
    general_preference: Choice
    prompt_alignment: Choice
    visual_appeal: Choice


class AgfsyncJudgeAnswer(BaseModel):
    schema_name: ClassVar[str] = "pairwise_judgement_agfsync"
    choice: Literal["A", "B"]
    reason: str = Field(min_length=1, max_length=2000)


def agfsync_order(prompt_index: int, seed: int, question: str) -> str:
    """The image order of one AGFSync comparison: "ab" (the model's image is A) or "ba", from a hash."""
    digest = hashlib.sha256(f"{prompt_index}:{seed}:{question}".encode()).digest()
    return "ab" if digest[0] % 2 == 0 else "ba"


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
    """Judge model A (``folder_a``) against base B on their shared (prompt_index, seed) pairs,
    under ``spec.protocol`` (see the module docstring).

    Raises:
        ValueError: the folders hold different prompts or share no image.
        instructengine.llm.errors.PermanentLLMError: the VLM server rejected the requests.
    """
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
    how = "3 questions x 1 order (agfsync)" if spec.protocol == "agfsync" else "2 orders (instructengine)"
    log(f"[judge] {a.model} vs {b.model}: {len(keys)} pairs x {how}, VLM {cfg.model}")
    dropped: Counter[str] = Counter()

    run = _run_agfsync if spec.protocol == "agfsync" else _run_instructengine
    summary, judgments, results_df = run(cfg, spec, a, b, keys, pa, paths_a, paths_b, run_dir, dropped)
    out = Path(out_dir)
    atomic_write_parquet(out / "judgments.parquet", judgments)
    atomic_write_parquet(out / "results.parquet", results_df)
    atomic_write_json(out / "summary.json", json_safe(summary))
    return summary


def _run_instructengine(cfg, spec, a, b, keys, pa, paths_a, paths_b, run_dir, dropped):
    import pandas as pd

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm import build_client
        from instructengine.llm.messages import user_message

        rows: list[dict[str, Any]] = []
        async with build_client(cfg, run_dir) as client:
            bar = Progress(f"judge {a.model} vs {b.model}", 2 * len(keys), unit="request")

            async def one(key: tuple[int, int], order: str) -> None:
                try:
                    await ask(key, order)
                finally:
                    bar.update(1)

            async def ask(key: tuple[int, int], order: str) -> None:
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

            with bar:
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
    summary: dict[str, Any] = {"model": a.model, "base": b.model, "protocol": "instructengine",
                               "win_rate": WIN_RATE["instructengine"], "pairs": len(keys), "questions": {}}
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
    return summary, judgments, results_df


def _run_agfsync(cfg, spec, a, b, keys, pa, paths_a, paths_b, run_dir, dropped):
    """AGFSync's protocol: one forced A/B request per pair and question, one image order each."""
    import pandas as pd

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        from instructengine.backends import DropItem
        from instructengine.evaluate.templates import render
        from instructengine.llm import build_client
        from instructengine.llm.messages import user_message

        rows: list[dict[str, Any]] = []
        async with build_client(cfg, run_dir) as client:
            bar = Progress(f"judge {a.model} vs {b.model}", len(keys) * len(AGFSYNC_QUESTIONS), unit="request")

            async def one(key: tuple[int, int], q: str) -> None:
                try:
                    await ask(key, q)
                finally:
                    bar.update(1)

            async def ask(key: tuple[int, int], q: str) -> None:
                order = agfsync_order(key[0], key[1], q)
                img_a = _load_image(a.path / paths_a[key], spec.image_size)
                img_b = _load_image(b.path / paths_b[key], spec.image_size)
                images = [img_a, img_b] if order == "ab" else [img_b, img_a]
                text = render("judge_agfsync", cfg.prompts_dir, prompt=pa[key[0]], question=AGFSYNC_QUESTIONS[q])
                try:
                    ans = await client.complete_json([user_message(text, images)], AgfsyncJudgeAnswer, seed=0)
                except DropItem as err:
                    dropped[f"judge:{err.reason}"] += 1
                    return
                first_is_model = order == "ab"
                winner = "a" if (ans.choice == "A") == first_is_model else "b"
                rows.append({"prompt_index": key[0], "seed": key[1], "order": order, "question": q,
                             "answer": ans.choice, "winner": winner, "reason": ans.reason})

            with bar:
                await asyncio.gather(*(one(k, q) for k in keys for q in AGFSYNC_QUESTIONS))
            return rows, client.usage.snapshot(), client.describe()

    rows, usage, described = asyncio.run(run())
    cols = ["prompt_index", "seed", "order", "question", "answer", "winner", "reason"]
    judgments = pd.DataFrame(rows, columns=cols).sort_values(["prompt_index", "seed", "question"]).reset_index(drop=True)
    decided = {(r.prompt_index, r.seed, r.question): r.winner for r in judgments.itertuples()}
    results = [{"prompt_index": k[0], "seed": k[1], "question": q,
                "outcome": {"a": "win", "b": "loss", None: "unanswered"}[decided.get((k[0], k[1], q))]}
               for k in keys for q in AGFSYNC_QUESTIONS]
    results_df = pd.DataFrame(results, columns=["prompt_index", "seed", "question", "outcome"])
    summary: dict[str, Any] = {"model": a.model, "base": b.model, "protocol": "agfsync", "win_rate": WIN_RATE["agfsync"],
                               "pairs": len(keys), "questions": {}}
    for q in AGFSYNC_QUESTIONS:
        c = Counter(results_df.loc[results_df["question"] == q, "outcome"])
        n = c["win"] + c["loss"]
        summary["questions"][q] = {"win": c["win"] / n if n else float("nan"), "tie": None,
                                   "loss": c["loss"] / n if n else float("nan"), "pairs": n, "unanswered": c["unanswered"]}
    summary["position"] = {"first_image_chosen": float((judgments["answer"] == "A").mean()) if len(judgments) else None,
                           "model_first": float((judgments["order"] == "ab").mean()) if len(judgments) else None}
    summary.update(dropped=dict(dropped), usage=usage, llm=described)
    return summary, judgments, results_df


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
