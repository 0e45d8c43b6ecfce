"""Stage 5b, judge: keep or drop each selected image, with a reason.

Judges (one protocol, ``fingerprint`` + ``async judge_many([(image_path, prompt)]) -> [Verdict]``):

* :class:`VLMJudge` - a vision-language model through :class:`instructengine.llm.client.ChatClient`
  (image inline, JSON-schema answer ``{"matches": bool, "reason": str}``, prompts as template
  files ``prompts/judge_system.jinja`` / ``judge_image.jinja``). Answers are cached in SQLite
  (``<run_dir>/judge/llm_cache.sqlite``), so a re-run asks nothing already answered. An item the
  client gives up on (retries exhausted, answer still malformed) is dropped with reason
  ``judge_error:<client reason>``; the next run judges again those whose cause was transient
  (``judge_error:unavailable:*``), and all of them with ``judge.retry_dropped``. A permanent error
  (bad key, unknown model) aborts the stage. The judge runs at temperature 0 unless
  ``judge.llm`` sets one.
* :class:`KeepAllJudge` - keeps everything (``judge.kind: none``);
* any judge a bundle registers (ShapesWorld's exact oracle: ``judge.kind: shapes_oracle``).

Writes ``<run_dir>/judge/judged.parquet`` (:data:`JUDGED_COLUMNS`) and ``manifest.json`` (counts
are images; dropped by reason). Resumable: verdicts are recorded ``chunk_size`` at a time.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

from pydantic import BaseModel, Field

from instructengine.images.config import DataPipelineConfig, JudgeConfig
from instructengine.images.select import read_selected
from instructengine.runs import Manifest, StageDir, atomic_write_parquet

__all__ = [
    "JUDGED_COLUMNS",
    "JudgeAnswer",
    "KeepAllJudge",
    "make_keep_all_judge",
    "make_vlm_judge",
    "STAGE",
    "VLMJudge",
    "Verdict",
    "read_judged",
    "run_judge",
    "run_judge_async",
]

STAGE = "judge"
PACKAGED_PROMPTS = Path(__file__).with_name("prompts")

#: column -> meaning (judged.parquet)
JUDGED_COLUMNS = {
    "instruction_id": "<pair_id>_<side>",
    "pair_id": "pair of pairs.parquet",
    "side": "1 or 2",
    "image": "the judged (selected) image, relative to the candidates folder",
    "keep": "True when the judge accepts the image for its instruction",
    "reason": "ok, or why it was dropped (vlm:mismatch, oracle:<attribute>, judge_error:<cause>)",
    "detail": "the judge's own words (VLM reason, oracle per-attribute verdicts)",
}


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str
    detail: str = ""


class ImageJudge(Protocol):
    fingerprint: str

    async def judge_many(self, items: Sequence[tuple[Path, str]]) -> list[Verdict]: ...


class JudgeAnswer(BaseModel):
    """What the VLM judge answers."""

    schema_name: ClassVar[str] = "image_judge"
    matches: bool = Field(description="True when the image follows the instruction")
    reason: str = Field("", description="One short sentence")


class KeepAllJudge:
    fingerprint = "keep-all"

    async def judge_many(self, items: Sequence[tuple[Path, str]]) -> list[Verdict]:
        return [Verdict(True, "ok") for _ in items]


class VLMJudge:
    """A VLM through the project's chat client; ``client`` is a ChatClient (closed by the caller)."""

    def __init__(self, client: Any, cfg: JudgeConfig):
        import jinja2

        self.client = client
        self.cfg = cfg
        search = [str(PACKAGED_PROMPTS)]
        if cfg.prompt_dir:
            if not Path(cfg.prompt_dir).is_dir():
                raise ValueError(f"judge.prompt_dir {cfg.prompt_dir!r} is not a folder of *.jinja templates")
            search.insert(0, cfg.prompt_dir)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined, autoescape=False,
            trim_blocks=True, lstrip_blocks=True,
        )
        import hashlib

        digest = hashlib.sha256()
        for name in ("judge_system", "judge_image"):
            digest.update(self._env.loader.get_source(self._env, f"{name}.jinja")[0].encode())  # type: ignore[union-attr]
        llm = client.cfg
        self.fingerprint = (
            f"vlm:{llm.model}:t={llm.temperature}:{llm.structured_output}:detail={cfg.image_detail}:"
            f"prompts={digest.hexdigest()[:12]}"
        )

    def messages(self, path: Path, prompt: str) -> list[dict[str, Any]]:
        from instructengine.llm.messages import image_part, system_message

        system = self._env.get_template("judge_system.jinja").render().strip()
        text = self._env.get_template("judge_image.jinja").render(instruction=prompt).strip()
        return [
            system_message(system),
            {"role": "user", "content": [{"type": "text", "text": text}, image_part(path, self.cfg.image_detail)]},
        ]

    async def judge_one(self, path: Path, prompt: str) -> Verdict:
        from instructengine.backends import DropItem

        try:
            answer = await self.client.complete_json(self.messages(path, prompt), JudgeAnswer)
        except DropItem as drop:
            return Verdict(False, f"judge_error:{drop.reason}", drop.detail[:200])
        if answer.matches:
            return Verdict(True, "ok", answer.reason[:300])
        return Verdict(False, "vlm:mismatch", answer.reason[:300])

    async def judge_many(self, items: Sequence[tuple[Path, str]]) -> list[Verdict]:
        """Judge ``items`` with at most ``concurrency`` in flight; a permanent error cancels the
        rest and is raised as itself."""
        from instructengine.backends import run_bounded

        out: list[Verdict | None] = [None] * len(items)

        async def one(i: int) -> None:
            out[i] = await self.judge_one(*items[i])

        await run_bounded(range(len(items)), one, self.cfg.concurrency)
        return out  # type: ignore[return-value]


def make_vlm_judge(cfg: DataPipelineConfig, stage_root: Path) -> VLMJudge:
    """``judge.kind: vlm``: the VLM judge on the pipeline's (or the judge's own) LLM settings."""
    from instructengine.llm import build_client

    # temperature 0 unless judge.llm sets one (DataPipelineConfig.judge_llm, JudgeConfig.llm)
    return VLMJudge(build_client(cfg.judge_llm(), stage_root), cfg.judge)


def make_keep_all_judge(cfg: DataPipelineConfig, stage_root: Path) -> KeepAllJudge:
    """``judge.kind: none``: keep every selected image."""
    return KeepAllJudge()


def _build_judge(cfg: DataPipelineConfig, stage: StageDir) -> tuple[Any, Any]:
    """(judge, its LLM client or None); the client must be closed. Judges come from the component
    registry (kind ``judge``): vlm, none, a bundle's, or 'package.module:factory'."""
    from instructengine import registry

    judge = registry.instantiate("judge", cfg.judge.kind, cfg, stage.root, where="judge.kind")
    if not hasattr(judge, "judge_many") or not hasattr(judge, "fingerprint"):
        raise ValueError(f"judge.kind {cfg.judge.kind!r} built {type(judge).__name__}, which lacks `fingerprint` and "
                         "`async judge_many(items) -> [Verdict]`")
    return judge, getattr(judge, "client", None)


async def run_judge_async(
    cfg: DataPipelineConfig, judge: Any = None, log: Callable[[str], None] = lambda s: None
) -> Manifest:
    """Run (or resume) the judge stage; ``judge`` defaults to the one ``cfg.judge`` names."""
    import pandas as pd

    from instructengine.backends import ledger_name

    stage = StageDir(cfg.run_dir, STAGE)
    manifest = stage.new_manifest(cfg.judge)
    selected = read_selected(cfg.run_dir)
    manifest.inputs["selected"] = str(Path(cfg.run_dir) / "select" / "selected.parquet")
    client = None
    if judge is None:
        judge, client = _build_judge(cfg, stage)
    usage_before = client.usage.snapshot() if client is not None else {}
    ledger = stage.ledger(ledger_name(STAGE, judge.fingerprint))
    verdicts: dict[str, Verdict] = {}
    for rec in ledger.records():
        verdicts.update({iid: Verdict(*v) for iid, v in rec["verdicts"].items()})
    from instructengine.backends import should_redo

    def redo(v: Verdict) -> bool:  # transient judge errors always, every judge error with retry_dropped
        return v.reason.startswith("judge_error:") and should_redo(v.reason.removeprefix("judge_error:"), cfg.judge.retry_dropped)

    todo = [r for r in selected.itertuples(index=False) if r.instruction_id not in verdicts or redo(verdicts[r.instruction_id])]
    log(f"[judge] {len(selected)} selected images, {len(todo)} to judge ({judge.fingerprint})")
    root = Path(cfg.run_dir) / "candidates"
    size = cfg.judge.chunk_size
    from instructengine.progress import Progress

    kept = dropped = 0
    try:
        with manifest.timed("judging"), Progress("judge", len(todo), unit="image") as bar:
            for start in range(0, len(todo), size):
                chunk = todo[start : start + size]
                out = await judge.judge_many([(root / r.image, r.prompt) for r in chunk])
                got = {r.instruction_id: v for r, v in zip(chunk, out)}
                ledger.add(f"chunk:{chunk[0].instruction_id}", verdicts={k: [v.keep, v.reason, v.detail] for k, v in got.items()})
                verdicts.update(got)
                kept += sum(v.keep for v in out)
                dropped += sum(not v.keep for v in out)
                bar.update(len(chunk), kept=kept, dropped=dropped)
    finally:
        ledger.close()
        if client is not None:
            usage = client.usage.snapshot()
            await client.aclose()
    rows = []
    for r in selected.itertuples(index=False):
        v = verdicts[r.instruction_id]
        manifest.count_in += 1
        if v.keep:
            manifest.count_out += 1
        else:
            manifest.drop(v.reason)
        rows.append({"instruction_id": r.instruction_id, "pair_id": r.pair_id, "side": int(r.side), "image": r.image,
                     "keep": bool(v.keep), "reason": v.reason, "detail": v.detail})
    table = pd.DataFrame(rows, columns=list(JUDGED_COLUMNS)).astype({"side": "int64", "keep": "bool"})
    manifest.outputs["judged"] = str(atomic_write_parquet(stage.path("judged.parquet"), table))
    manifest.extra["judge"] = judge.fingerprint
    if client is not None:
        from instructengine.llm.usage import Usage

        manifest.extra["llm_usage"] = Usage.since(usage_before, usage)
        manifest.extra["llm"] = client.describe()
    stage.write_manifest(manifest)
    return manifest


def run_judge(cfg: DataPipelineConfig, judge: Any = None, log: Callable[[str], None] = lambda s: None) -> Manifest:
    """Synchronous wrapper of :func:`run_judge_async`."""
    return asyncio.run(run_judge_async(cfg, judge, log))


def read_judged(run_dir: str | Path) -> Any:
    import pandas as pd

    path = Path(run_dir) / STAGE / "judged.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no judgements at {str(path)!r}; run the judge stage first")
    return pd.read_parquet(path)
