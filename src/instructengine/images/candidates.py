"""Stage 4, candidates: N images per instruction, one file per image, sharded with accelerate.

Reads ``<run_dir>/instructions/pairs.parquet``; every pair gives two instructions
(``<pair_id>_1``, ``<pair_id>_2``). Writes into ``<run_dir>/candidates/``:

* ``images/<id[:2]>/<instruction_id>_<k>.png`` - candidate ``k`` (0..N-1), drawn with the seed
  :func:`~instructengine.images.files.image_seed` ``(candidates.seed, instruction_id, k)``;
* ``candidates.parquet`` - one row per image (:data:`CANDIDATE_COLUMNS`);
* ``generator.json`` - the generator's fingerprint; a re-run with another generator is refused
  (its images would be mixed with these);
* ``failures-shard<s>-rank<r>.jsonl`` - instructions whose generation failed, with the reason;
* ``run-shard<s>-rank<r>.json`` - what each process generated in its last run, and how fast;
* ``manifest.json`` - counts in/out (images), dropped by reason, throughput.

Calls and sharding: the planned instructions are cut into fixed calls of
``instructions_per_call`` instructions (all N candidates of each in ONE batched generator call).
Every process (``accelerate launch --multi_gpu --num_processes K ...``, torchrun, or one plain
process) lists the calls that still miss an image, takes its slice with
``PartialState().split_between_processes`` and runs them; after a barrier the main process merges
what is on disk into ``candidates.parquet``. Independent jobs without a rendezvous use
``num_shards`` / ``shard_index`` instead. Resume = skip calls whose images all exist and write only
missing files, so a preempted process (or a SIGKILL) loses at most the call in flight. Because a
call's composition never changes, a redone call reproduces its images bit for bit, and the final
artifacts equal those of an uninterrupted run (with any number of processes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from instructengine.images.config import DataPipelineConfig
from instructengine.images.files import candidate_path, image_exists, image_seed, instruction_id, read_png_meta, write_png
from instructengine.runs import Ledger, Manifest, StageDir, atomic_write_json, atomic_write_parquet

__all__ = ["CANDIDATE_COLUMNS", "STAGE", "Instruction", "limit_pairs", "plan_instructions", "read_candidates", "run_candidates"]

STAGE = "candidates"

#: column -> meaning (candidates.parquet)
CANDIDATE_COLUMNS = {
    "candidate_id": "<instruction_id>_<k>",
    "instruction_id": "<pair_id>_<side>",
    "pair_id": "pair of pairs.parquet",
    "side": "1: instruction_1 of the pair, 2: instruction_2",
    "prompt": "the instruction text the image was generated from",
    "k": "candidate index 0..N-1",
    "seed": "generation seed of this image",
    "image": "PNG path relative to the candidates folder",
    "nsfw": "flagged (and blacked out) by the pipeline's safety checker",
}


@dataclass(frozen=True)
class Instruction:
    id: str
    pair_id: str
    side: int
    prompt: str


def limit_pairs(pairs: Any, max_pairs: int | None) -> Any:
    """``pairs`` itself, or its ``max_pairs`` rows with the smallest pair ids (ids are hashes, so this
    is a stable random subset, balanced over themes and dimensions) in their original order."""
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    keep = set(sorted(pairs["pair_id"])[:max_pairs])
    return pairs[pairs["pair_id"].isin(keep)]


def plan_instructions(pairs: Any, max_pairs: int | None = None) -> list[Instruction]:
    """The instructions of ``pairs`` (a pairs.parquet DataFrame; see :func:`limit_pairs` for
    ``max_pairs``), in pair order, side 1 then 2."""
    rows = limit_pairs(pairs, max_pairs).to_dict("records")
    out = []
    for r in rows:
        for side in (1, 2):
            out.append(Instruction(instruction_id(r["pair_id"], side), r["pair_id"], side, str(r[f"instruction_{side}"])))
    ids = [i.id for i in out]
    if len(set(ids)) != len(ids):
        raise ValueError("pairs.parquet has repeated pair_id values; each pair needs a unique pair_id")
    return out


def _failures(stage: StageDir) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(stage.root.glob("failures-*.jsonl")):
        ledger = Ledger(path)
        out.update({rec["key"]: rec for rec in ledger.records()})
    return out


def _check_generator(stage: StageDir, fingerprint: str, describe: dict[str, Any], is_main: bool) -> None:
    path = stage.path("generator.json")
    if path.exists():
        old = json.loads(path.read_text()).get("fingerprint")
        if old != fingerprint:
            raise ValueError(
                f"{stage.root} holds candidates made by generator {old!r}, but the config now gives {fingerprint!r}; "
                "use another run_dir (or delete the candidates folder) instead of mixing images of two generators"
            )
    elif is_main:
        atomic_write_json(path, {"fingerprint": fingerprint, **describe})


def run_candidates(
    cfg: DataPipelineConfig,
    generator: Any = None,
    pairs: Any = None,
    log: Callable[[str], None] = lambda s: None,
    instructions: list[Instruction] | None = None,
) -> Manifest | None:
    """Run (or resume) the candidates stage in ``<cfg.run_dir>/candidates``.

    ``generator`` defaults to the one ``cfg.generator`` names (built in every process);
    ``pairs`` to ``<run_dir>/instructions/pairs.parquet``; ``instructions`` (e.g. a prompt list through
    ``instructengine.train.sources.prompt_instructions``), or else ``candidates.prompt_list`` in the
    config, replaces the pairs altogether. Returns the
    manifest on the main process, None on the others.

    Raises:
        FileNotFoundError: no pairs.parquet.
        ValueError: another generator made the images already in the folder.
        RuntimeError: the generator failed on the first ``abort_after_failures`` instructions.
    """
    from accelerate import PartialState

    # cpu=True lets processes started by `accelerate launch --multi_gpu` / torchrun on a machine
    # without GPUs form a gloo (MULTI_CPU) group; a plain single process stays single
    state = PartialState(cpu=cfg.generator.device == "cpu")
    ccfg = cfg.candidates
    stage = StageDir(cfg.run_dir, STAGE)
    if instructions is None and ccfg.prompt_list is not None:
        from instructengine.train.sources import prompt_list_instructions

        pl = ccfg.prompt_list
        instructions, rows, dropped = prompt_list_instructions(pl.path, pl, pl.max_prompts, pl.subset_seed)
        log(f"[candidates] prompt list {pl.path} {pl.files}: {rows} rows -> {len(instructions)} prompts; "
            f"dropped {dict(dropped) or 'none'}")
    if instructions is None:
        if pairs is None:
            from instructengine.instructions.stage import read_pairs

            pairs = read_pairs(cfg.run_dir)
        instructions = plan_instructions(pairs, ccfg.max_pairs)
    n = ccfg.n_candidates
    fingerprint = generator.fingerprint if generator is not None else cfg.generator.fingerprint()
    _check_generator(stage, fingerprint, {"generator": cfg.generator.model_dump(mode="json")}, state.is_main_process)

    if state.is_main_process:
        for tmp in stage.root.glob("images/*/.*.tmp"):  # left by a process killed while writing
            tmp.unlink(missing_ok=True)
    # every process must list the missing images before any process starts writing, or the
    # processes would see different lists and split them inconsistently
    state.wait_for_everyone()
    failed = _failures(stage)
    skip = set() if ccfg.retry_failed else set(failed)
    mine_all = [ins for i, ins in enumerate(instructions) if i % ccfg.num_shards == ccfg.shard_index]
    # Calls are fixed groups of the planned list, never regrouped on resume or across process
    # counts: an image is then always made in the same batch, so its pixels are bit-identical
    # (CPU kernels may round a pixel differently in a batch of another size).
    ipc = ccfg.instructions_per_call
    calls = [[i for i in mine_all[c : c + ipc] if i.id not in skip] for c in range(0, len(mine_all), ipc)]
    todo = [call for call in calls if any(_missing(stage, ins, n) for ins in call)]
    log(
        f"[candidates] {len(instructions)} instructions; {sum(map(len, todo))} in {len(todo)} calls still miss "
        f"images; {state.num_processes} process(es)"
    )
    state.wait_for_everyone()

    generated, seconds = 0, 0.0
    with state.split_between_processes(todo) as mine:
        if mine:
            if generator is None:
                generator = _build_for_process(cfg, state)
            label = "candidates" if state.num_processes == 1 else f"candidates {_worker_name(ccfg, state)}"
            generated, seconds = _generate_calls(stage, generator, mine, ccfg, _worker_name(ccfg, state), log, label)
    atomic_write_json(
        stage.path(f"run-{_worker_name(ccfg, state)}.json"),
        {"world_size": state.num_processes, "generated": generated, "seconds": round(seconds, 3)},
    )
    state.wait_for_everyone()
    manifest = None
    if ccfg.num_shards > 1:
        log(f"[candidates] shard {ccfg.shard_index}/{ccfg.num_shards} done; run once with num_shards=1 to merge")
    elif state.is_main_process:
        manifest = _merge(cfg, stage, instructions, fingerprint, state.num_processes, sum(map(len, todo)))
    state.wait_for_everyone()
    return manifest


def _worker_name(ccfg: Any, state: Any) -> str:
    """shard<s>-rank<r>: unique among concurrent writers (shards may run on different machines)."""
    return f"shard{ccfg.shard_index}-rank{state.process_index}"


def _build_for_process(cfg: DataPipelineConfig, state: Any) -> Any:
    from instructengine.generation import build_generator

    gcfg = cfg.generator
    if gcfg.device == "auto":
        gcfg = gcfg.model_copy(update={"device": str(state.device)})
    return build_generator(gcfg)


def _missing(stage: StageDir, ins: Instruction, n: int) -> bool:
    return any(not image_exists(stage.path(candidate_path(ins.id, k))) for k in range(n))


def _generate_calls(
    stage: StageDir, generator: Any, calls: list[list[Instruction]], ccfg: Any, worker: str, log: Callable[[str], None],
    label: str = "candidates",
) -> tuple[int, float]:
    """Generate each call's images (all N of each of its instructions, so the batch is the same as
    in any other run) and write those still missing; a failing call is redone one instruction at a
    time to find and record the failing ones. Progress (:mod:`instructengine.progress`) counts
    calls, images written and instructions failed. Returns (images written, seconds)."""
    from instructengine.progress import Progress

    n = ccfg.n_candidates
    failures = Ledger(stage.path(f"failures-{worker}.jsonl"))
    written = 0
    failed = 0
    streak = 0  # failed instructions before the first success
    succeeded = False
    t0 = time.perf_counter()
    try:
        with Progress(label, len(calls), unit="call") as bar:
            for call in calls:
                try:
                    written += _generate_jobs(stage, generator, [(ins, k) for ins in call for k in range(n)], ccfg.seed)
                    succeeded = True
                except Exception as err:  # noqa: BLE001 - one bad item must not end the stage; see below
                    last = err
                    if len(call) == 1:
                        _record_failure(failures, call[0], err)
                        streak += 1
                        failed += 1
                    else:
                        for ins in call:
                            try:
                                written += _generate_jobs(stage, generator, [(ins, k) for k in range(n)], ccfg.seed)
                                succeeded = True
                            except Exception as err_one:  # noqa: BLE001
                                _record_failure(failures, ins, err_one)
                                streak += 1
                                failed += 1
                                last = err_one
                    if not succeeded and streak >= ccfg.abort_after_failures:
                        raise RuntimeError(
                            f"the generator failed on the first {streak} instructions of this process "
                            f"(last: {type(last).__name__}: {last}); it is probably misconfigured"
                        ) from last
                bar.update(1, images=written, **({"failed": failed} if failed else {}))
    finally:
        failures.close()
    return written, time.perf_counter() - t0


def _generate_jobs(stage: StageDir, generator: Any, jobs: list[tuple[Instruction, int]], base_seed: int) -> int:
    """One generator call for ``jobs``; writes the images whose file is missing; returns how many."""
    if not jobs:
        return 0
    seeds = [image_seed(base_seed, ins.id, k) for ins, k in jobs]
    out = generator.generate([ins.prompt for ins, _ in jobs], seeds)
    if len(out.images) != len(jobs):
        raise RuntimeError(f"generator returned {len(out.images)} images for {len(jobs)} prompts")
    flags = out.flagged or [False] * len(jobs)
    written = 0
    for (ins, k), seed, image, flag in zip(jobs, seeds, out.images, flags):
        path = stage.path(candidate_path(ins.id, k))
        if not image_exists(path):
            write_png(path, image, {"seed": seed, "nsfw": bool(flag)})
            written += 1
    return written


def _record_failure(ledger: Ledger, ins: Instruction, err: Exception) -> None:
    ledger.add(ins.id, status="failed", reason=f"generation_error:{type(err).__name__}", detail=str(err)[:300])


def _merge(
    cfg: DataPipelineConfig, stage: StageDir, instructions: list[Instruction], fingerprint: str, world: int, todo: int
) -> Manifest:
    import pandas as pd

    ccfg = cfg.candidates
    n = ccfg.n_candidates
    manifest = stage.new_manifest(cfg.candidates)
    if cfg.candidates.prompt_list is not None:
        pl = cfg.candidates.prompt_list
        manifest.inputs["prompt_list"] = {"path": pl.path, "files": list(pl.files), "column": pl.column,
                                          "max_prompts": pl.max_prompts, "subset_seed": pl.subset_seed}
    else:
        manifest.inputs["pairs"] = str(Path(cfg.run_dir) / "instructions" / "pairs.parquet")
    failed = _failures(stage)
    read_flags = cfg.generator.kind == "diffusers" or ":" in cfg.generator.kind  # backends that may flag images
    rows = []
    missing_unexplained = []
    failed_now: set[str] = set()
    for ins in instructions:
        for k in range(n):
            manifest.count_in += 1
            rel = candidate_path(ins.id, k)
            path = stage.path(rel)
            if not image_exists(path):
                if ins.id in failed:
                    manifest.drop(failed[ins.id]["reason"])
                    failed_now.add(ins.id)
                else:
                    missing_unexplained.append(rel)
                continue
            nsfw = bool(read_png_meta(path).get("nsfw", False)) if read_flags else False
            rows.append(
                {
                    "candidate_id": f"{ins.id}_{k}",
                    "instruction_id": ins.id,
                    "pair_id": ins.pair_id,
                    "side": ins.side,
                    "prompt": ins.prompt,
                    "k": k,
                    "seed": image_seed(ccfg.seed, ins.id, k),
                    "image": rel,
                    "nsfw": nsfw,
                }
            )
    if missing_unexplained:
        raise RuntimeError(
            f"{len(missing_unexplained)} candidate images are missing with no recorded failure "
            f"(first: {missing_unexplained[0]}); a process probably died - run the stage again to resume"
        )
    table = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS))
    table = table.astype({"side": "int64", "k": "int64", "seed": "int64", "nsfw": "bool"})
    out = atomic_write_parquet(stage.path("candidates.parquet"), table)
    manifest.outputs["candidates"] = str(out)
    manifest.count_out = len(table)
    runs = []
    for r in range(world):
        p = stage.path(f"run-shard0-rank{r}.json")
        if p.exists():
            runs.append(json.loads(p.read_text()))
    generated = sum(r["generated"] for r in runs)
    busiest = max((r["seconds"] for r in runs), default=0.0)
    manifest.extra.update(
        instructions=len(instructions),
        pairs=len(instructions) // 2,
        n_candidates=n,
        generator=fingerprint,
        processes=world,
        instructions_missing_at_start=todo,
        instructions_failed=len(failed_now),
        nsfw_flagged=int(table["nsfw"].sum()) if len(table) else 0,
        generated_this_run=generated,
        images_per_s_this_run=round(generated / busiest, 2) if busiest > 0 else None,
    )
    manifest.timings["generation_busiest_process"] = round(busiest, 3)
    stage.write_manifest(manifest)
    return manifest


def read_candidates(run_dir: str | Path) -> Any:
    """``<run_dir>/candidates/candidates.parquet`` as a DataFrame (checked for its columns)."""
    import pandas as pd

    path = Path(run_dir) / STAGE / "candidates.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no candidates at {str(path)!r}; run the candidates stage first")
    df = pd.read_parquet(path)
    missing = [c for c in CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(CANDIDATE_COLUMNS)}")
    return df
