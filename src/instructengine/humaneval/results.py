"""Results of a study: per pair win/tie/loss with bootstrap intervals, Bradley-Terry, agreement.

:func:`vote_log` reads the votes of a study from the database as plain rows (the exported vote
log); :func:`compute_results` turns such rows into the results dict (pure, tested alone);
:func:`progress_of` gives per-annotator progress and quality (gold accuracy, median time on
task) and :func:`excluded_annotators` the annotators left out of the results (chosen, or below
the gold-accuracy bar); :func:`winrate_chart` draws the paper's win-rate bar chart;
:func:`write_exports` writes the files ``review results`` produces.

Gold items never enter the vote log or the results: the log joins tasks to comparisons.

Each vote is mapped from screen sides to systems with the task's stored side assignment: for the
pair (A, B) of a comparison, ``left`` means A won when A was shown on the left. Win rate of A
over B = (wins + (ties + both_bad) / 2) / votes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from instructengine.humaneval.stats import bootstrap_win_rate, bradley_terry, krippendorff_alpha_nominal

__all__ = [
    "LOG_COLUMNS",
    "compute_results",
    "excluded_annotators",
    "find_study",
    "flags_of",
    "outcome",
    "progress_of",
    "vote_log",
    "votes_csv",
    "winrate_chart",
    "write_exports",
]

#: columns of the exported vote log (criteria add ``criterion_<name>`` columns after ``choice``)
LOG_COLUMNS = [
    "status", "vote_id", "annotator", "task_id", "comparison_id", "position", "prompt_index", "seed",
    "category", "prompt", "system_a", "system_b", "left_system", "right_system", "choice", "winner",
    "created_at", "undone_at", "time_on_task_s",
]


def outcome(choice: str, a_on_left: bool) -> str:
    """Screen choice -> 'a', 'b', 'tie' or 'both_bad' for the comparison's (A, B)."""
    if choice == "left":
        return "a" if a_on_left else "b"
    if choice == "right":
        return "b" if a_on_left else "a"
    return choice


def find_study(session, name: str | None = None):
    """The study named ``name`` (or the only one). Raises LookupError with the names available."""
    from sqlalchemy import select

    from instructengine.humaneval import db

    studies = session.scalars(select(db.Study).order_by(db.Study.id)).all()
    if name is None:
        if len(studies) != 1:
            raise LookupError(
                f"the database holds {len(studies)} studies {[s.name for s in studies]}; name one with results.study=NAME"
            )
        return studies[0]
    for s in studies:
        if s.name == name:
            return s
    raise LookupError(f"no study named {name!r}; the database holds {[s.name for s in studies]}")


def vote_log(session, study, include_undone: bool = False) -> list[dict[str, Any]]:
    """The study's votes as rows (LOG_COLUMNS + ``criterion_<name>``), oldest first."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from instructengine.humaneval import db

    sa, sb = aliased(db.System), aliased(db.System)
    base = (
        select(db.Task, db.Annotator.name, db.Comparison.id, db.Item, sa.name, sb.name)
        .join(db.Annotator, db.Task.annotator_id == db.Annotator.id)
        .join(db.Comparison, db.Task.comparison_id == db.Comparison.id)
        .join(db.Item, db.Comparison.item_id == db.Item.id)
        .join(sa, db.Comparison.system_a_id == sa.id)
        .join(sb, db.Comparison.system_b_id == sb.id)
        .where(db.Annotator.study_id == study.id)
    )
    sources = [("active", db.Vote)] + ([("undone", db.UndoneVote)] if include_undone else [])
    rows = []
    for status, model in sources:
        q = base.add_columns(model).join(model, model.task_id == db.Task.id)
        for task, ann, comp_id, item, name_a, name_b, vote in session.execute(q):
            left, right = (name_a, name_b) if task.a_on_left else (name_b, name_a)
            out = outcome(vote.choice, task.a_on_left)
            row = {
                "status": status, "vote_id": vote.id, "annotator": ann, "task_id": task.id,
                "comparison_id": comp_id, "position": task.position, "prompt_index": item.prompt_index,
                "seed": item.seed, "category": item.category, "prompt": item.prompt, "system_a": name_a,
                "system_b": name_b, "left_system": left, "right_system": right, "choice": vote.choice,
                "winner": {"a": name_a, "b": name_b}.get(out, out),
                "created_at": _iso(vote.created_at),
                "undone_at": _iso(getattr(vote, "undone_at", None)),
                "time_on_task_s": None if vote.time_on_task_ms is None else vote.time_on_task_ms / 1000,
            }
            for c in study.criteria:
                row[f"criterion_{c}"] = (vote.criteria or {}).get(c)
            rows.append(row)
    rows.sort(key=lambda r: (r["created_at"] or "", r["status"], r["vote_id"]))
    return rows


def _iso(t) -> str | None:
    if t is None:
        return None
    from datetime import timezone

    if t.tzinfo is None:  # SQLite drops the zone; values are written in UTC
        t = t.replace(tzinfo=timezone.utc)
    return t.isoformat()


def _pair_row(name_a: str, name_b: str, votes: list[tuple[str, Any]], n_boot: int, confidence: float) -> dict:
    counts = {"a": 0, "b": 0, "tie": 0, "both_bad": 0}
    scores, clusters = [], []
    for out, cluster in votes:
        counts[out] += 1
        scores.append({"a": 1.0, "b": 0.0}.get(out, 0.5))
        clusters.append(cluster)
    row = {
        "system_a": name_a, "system_b": name_b, "n": len(votes), "wins": counts["a"], "ties": counts["tie"],
        "both_bad": counts["both_bad"], "losses": counts["b"],
        "win_rate": None, "ci_low": None, "ci_high": None,
    }
    if votes:
        rate, lo, hi = bootstrap_win_rate(scores, clusters, n_boot=n_boot, confidence=confidence)
        row.update(win_rate=rate, ci_low=lo, ci_high=hi)
    return row


def compute_results(
    rows: list[dict[str, Any]],
    systems: list[str],
    criteria: list[str],
    pairs: list[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Results from vote-log rows (only ``status == 'active'`` rows count).

    ``pairs``: the (A, B) pairs to report, in order (default: those seen in ``rows``).
    Returns {"criteria": {name: {"pairs": [...], "bradley_terry": [...] | None, "agreement": {...}}},
    "n_votes", "systems", "confidence"}; criterion "overall" is the overall choice.
    """
    rows = [r for r in rows if r.get("status", "active") == "active"]
    if pairs is None:
        seen: dict[tuple[str, str], None] = {}
        for r in rows:
            seen.setdefault((r["system_a"], r["system_b"]), None)
        pairs = list(seen)
    out: dict[str, Any] = {"systems": systems, "n_votes": len(rows), "confidence": confidence, "criteria": {}}
    for crit in ["overall", *criteria]:
        key = "choice" if crit == "overall" else f"criterion_{crit}"
        by_pair: dict[tuple[str, str], list] = {p: [] for p in pairs}
        units: dict[Any, list] = {}
        for r in rows:
            choice = r.get(key)
            if choice is None:
                continue
            a_on_left = r["left_system"] == r["system_a"]
            o = outcome(choice, a_on_left)
            by_pair.setdefault((r["system_a"], r["system_b"]), []).append((o, r["prompt_index"]))
            units.setdefault(r["comparison_id"], []).append(o)
        pair_rows = [_pair_row(a, b, v, n_boot, confidence) for (a, b), v in by_pair.items()]
        bt = None
        if len(systems) > 2:
            idx = {s: i for i, s in enumerate(systems)}
            w = np.zeros((len(systems), len(systems)))
            for pr in pair_rows:
                i, j = idx[pr["system_a"]], idx[pr["system_b"]]
                half = 0.5 * (pr["ties"] + pr["both_bad"])
                w[i, j] += pr["wins"] + half
                w[j, i] += pr["losses"] + half
            if w.sum() > 0:
                p = bradley_terry(w)
                order = np.argsort(-p)
                bt = [
                    {"rank": rank + 1, "system": systems[i], "strength": float(p[i]), "log_strength": float(np.log(p[i]))}
                    for rank, i in enumerate(order)
                ]
        pairable = [u for u in units.values() if len(u) >= 2]
        alpha = krippendorff_alpha_nominal(pairable) if pairable else float("nan")
        out["criteria"][crit] = {
            "pairs": pair_rows,
            "bradley_terry": bt,
            "agreement": {
                "krippendorff_alpha": None if np.isnan(alpha) else alpha,
                "units": len(pairable),
                "values": sum(len(u) for u in pairable),
            },
        }
    return out


def progress_of(session, study) -> list[dict[str, Any]]:
    """Per annotator: tasks done / total (gold included), gold answered / correct / accuracy,
    median time on task (seconds, all active votes), last vote."""
    import statistics

    from sqlalchemy import func, select

    from instructengine.humaneval import db

    anns = list(session.scalars(select(db.Annotator).where(db.Annotator.study_id == study.id).order_by(db.Annotator.id)))
    ids = [a.id for a in anns]
    total = dict(session.execute(
        select(db.Task.annotator_id, func.count(db.Task.id)).where(db.Task.annotator_id.in_(ids)).group_by(db.Task.annotator_id)
    ).all())
    done = dict(session.execute(
        select(db.Vote.annotator_id, func.count(db.Vote.id)).where(db.Vote.annotator_id.in_(ids)).group_by(db.Vote.annotator_id)
    ).all())
    last = dict(session.execute(
        select(db.Vote.annotator_id, func.max(db.Vote.created_at)).where(db.Vote.annotator_id.in_(ids)).group_by(db.Vote.annotator_id)
    ).all())
    times: dict[int, list[float]] = {}
    for ann_id, ms in session.execute(select(db.Vote.annotator_id, db.Vote.time_on_task_ms).where(db.Vote.annotator_id.in_(ids))):
        if ms is not None:
            times.setdefault(ann_id, []).append(ms / 1000)
    gold: dict[int, list[bool]] = {}
    q = (select(db.Task.annotator_id, db.Task.a_on_left, db.Vote.choice).join(db.Vote, db.Vote.task_id == db.Task.id)
         .where(db.Task.gold_id.is_not(None), db.Task.annotator_id.in_(ids)))
    for ann_id, better_on_left, choice in session.execute(q):
        gold.setdefault(ann_id, []).append(choice == ("left" if better_on_left else "right"))
    out = []
    for a in anns:
        answers = gold.get(a.id, [])
        out.append({
            "annotator": a.name, "done": done.get(a.id, 0), "total": total.get(a.id, 0), "last_vote": _iso(last.get(a.id)),
            "gold_answered": len(answers), "gold_correct": sum(answers),
            "gold_accuracy": (sum(answers) / len(answers)) if answers else None,
            "median_time_on_task_s": statistics.median(times[a.id]) if times.get(a.id) else None,
        })
    return out


def excluded_annotators(quality: list[dict[str, Any]], chosen, min_gold_accuracy: float | None) -> dict[str, str]:
    """Annotators to leave out of the results -> why.

    ``chosen``: names excluded by hand; ``min_gold_accuracy``: also exclude those who answered
    at least one gold item and got a share below it right (pure; rows as from :func:`progress_of`).

    Raises:
        LookupError: a chosen name is not an annotator of the study (the message lists them).
    """
    names = [q["annotator"] for q in quality]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise LookupError(f"annotator {unknown[0]!r} is not in this study; its annotators are {sorted(names)}")
    out: dict[str, list[str]] = {}
    for n in chosen:
        out.setdefault(n, []).append("chosen (results.exclude_annotators or the admin view)")
    if min_gold_accuracy is not None:
        for q in quality:
            if q["gold_answered"] and q["gold_correct"] / q["gold_answered"] < min_gold_accuracy:
                acc = q["gold_correct"] / q["gold_answered"]
                out.setdefault(q["annotator"], []).append(
                    f"gold accuracy {acc:.0%} < {min_gold_accuracy:.0%} ({q['gold_correct']}/{q['gold_answered']})"
                )
    return {n: "; ".join(r) for n, r in out.items()}


def flags_of(session, study) -> list[dict[str, Any]]:
    """Reported images, oldest first, with the system (or "gold item") that only the admin sees."""
    from sqlalchemy import select

    from instructengine.humaneval import db

    q = (
        select(db.Flag, db.Annotator.name, db.System.name, db.Item, db.GoldItem.prompt)
        .join(db.Annotator, db.Flag.annotator_id == db.Annotator.id)
        .join(db.Image, db.Flag.image_id == db.Image.id)
        .join(db.Task, db.Flag.task_id == db.Task.id)
        .outerjoin(db.System, db.Image.system_id == db.System.id)
        .outerjoin(db.Item, db.Image.item_id == db.Item.id)
        .outerjoin(db.GoldItem, db.Task.gold_id == db.GoldItem.id)
        .where(db.Annotator.study_id == study.id)
        .order_by(db.Flag.id)
    )
    return [
        {"annotator": ann, "task_id": f.task_id, "system": sysname if sysname is not None else "gold item",
         "prompt_index": item.prompt_index if item else None, "seed": item.seed if item else None,
         "prompt": item.prompt if item else gold_prompt, "side": f.side, "reason": f.reason, "note": f.note,
         "created_at": _iso(f.created_at)}
        for f, ann, sysname, item, gold_prompt in session.execute(q)
    ]


def study_results(session, study, n_boot: int = 2000, confidence: float = 0.95, exclude=(),
                  min_gold_accuracy: float | None = None) -> dict[str, Any]:
    """Everything the admin view shows, for one study, without the excluded annotators' votes.

    Raises:
        LookupError: a name in ``exclude`` is not an annotator of the study.
    """
    from sqlalchemy import func, select

    from instructengine.humaneval import db

    systems = [s.name for s in session.scalars(select(db.System).where(db.System.study_id == study.id).order_by(db.System.position))]
    by_id = {s.id: s.name for s in session.scalars(select(db.System).where(db.System.study_id == study.id))}
    pair_ids = session.execute(
        select(db.Comparison.system_a_id, db.Comparison.system_b_id).where(db.Comparison.study_id == study.id).distinct()
    ).all()
    pos = {n: i for i, n in enumerate(systems)}
    pairs = sorted({(by_id[a], by_id[b]) for a, b in pair_ids}, key=lambda p: (pos[p[0]], pos[p[1]]))
    progress = progress_of(session, study)
    excluded = excluded_annotators(progress, list(exclude), min_gold_accuracy)
    for p in progress:
        p["excluded"] = p["annotator"] in excluded
        p["excluded_reason"] = excluded.get(p["annotator"])
    rows = vote_log(session, study)
    kept = [r for r in rows if r["annotator"] not in excluded]
    res = compute_results(kept, systems, list(study.criteria), pairs=pairs, n_boot=n_boot, confidence=confidence)
    res["study"] = study.name
    res["progress"] = progress
    res["flags"] = flags_of(session, study)
    res["excluded_annotators"] = sorted(excluded)
    res["exclude_chosen"] = sorted(set(exclude))
    res["min_gold_accuracy"] = min_gold_accuracy
    res["n_votes_excluded"] = len(rows) - len(kept)
    ann_ids = select(db.Annotator.id).where(db.Annotator.study_id == study.id)
    n_tasks = dict(session.execute(
        select(db.Task.gold_id.is_(None), func.count(db.Task.id)).where(db.Task.annotator_id.in_(ann_ids))
        .group_by(db.Task.gold_id.is_(None))
    ).all())
    res["n_tasks"] = n_tasks.get(True, 0)
    res["n_gold_tasks"] = n_tasks.get(False, 0)
    return res


def winrate_chart(results: dict[str, Any], path: str | Path | None = None) -> bytes:
    """The paper's win-rate bar chart: per pair, stacked win / tie / loss shares, one panel per criterion.

    Returns the PNG bytes (and writes them to ``path`` when given).
    """
    from instructengine.plots import figure_png, pyplot

    plt = pyplot()
    crits = list(results["criteria"])
    pairs = results["criteria"]["overall"]["pairs"]
    n_pairs = max(1, len(pairs))
    fig, axes = plt.subplots(
        len(crits), 1, figsize=(10.0, 0.55 * n_pairs * len(crits) + 1.1 * len(crits) + 0.4), squeeze=False
    )
    colors = {"win": "#2f6fdf", "tie": "#b8bec9", "loss": "#e2725b"}
    for ax, crit in zip(axes[:, 0], crits):
        prs = results["criteria"][crit]["pairs"]
        labels = [f"{p['system_a']} vs {p['system_b']}" for p in prs]
        y = np.arange(len(prs))[::-1]
        for k, pr in enumerate(prs):
            n = max(pr["n"], 1)
            parts = [("win", pr["wins"] / n), ("tie", (pr["ties"] + pr["both_bad"]) / n), ("loss", pr["losses"] / n)]
            left = 0.0
            for name, share in parts:
                ax.barh(y[k], share * 100, left=left, color=colors[name], height=0.6,
                        label=name if k == 0 else None, edgecolor="white", linewidth=0.8)
                if share >= 0.07:
                    ax.text(left + share * 50, y[k], f"{share * 100:.0f}%", ha="center", va="center",
                            color="white" if name != "tie" else "#222", fontsize=9, fontweight="bold")
                left += share * 100
            if pr["n"] == 0:
                ax.text(50, y[k], "no votes yet", ha="center", va="center", color="#666", fontsize=9)
        ax.set_yticks(y, labels, fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of votes (%)", fontsize=8)
        ax.set_title(crit.replace("_", " ").capitalize(), fontsize=10, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
        ax.axvline(50, color="#444", linewidth=0.6, linestyle=":")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, ["A wins", "tie / both bad", "B wins"][: len(handles)], loc="upper right",
                   ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return figure_png(fig, path)


def _csv_cell(v: Any) -> Any:
    # A cell starting with = + - @ is run as a formula by spreadsheet programs (CSV injection).
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def votes_csv(rows: list[dict[str, Any]], criteria: list[str]) -> str:
    cols = LOG_COLUMNS[:15] + [f"criterion_{c}" for c in criteria] + LOG_COLUMNS[15:]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_cell(r.get(k)) for k in cols})
    return buf.getvalue()


def format_results(res: dict[str, Any]) -> str:
    """A plain-text summary for the terminal."""
    lines = [f"study {res['study']}: {res['n_votes']} votes of {res['n_tasks']} tasks"]
    if res.get("excluded_annotators"):
        lines.append(f"excluded annotators ({res['n_votes_excluded']} votes left out): "
                     + ", ".join(f"{p['annotator']} ({p['excluded_reason']})" for p in res["progress"] if p["excluded"]))
    gold = [p for p in res.get("progress", []) if p.get("gold_answered")]
    if gold:
        lines.append("gold accuracy: " + ", ".join(f"{p['annotator']} {p['gold_correct']}/{p['gold_answered']}" for p in gold))
    for crit, body in res["criteria"].items():
        lines.append(f"\n[{crit}]")
        lines.append(f"{'A':>18} vs {'B':<18} {'n':>5} {'W':>5} {'T':>5} {'BB':>5} {'L':>5}  win rate [CI]")
        for p in body["pairs"]:
            wr = "-" if p["win_rate"] is None else f"{p['win_rate']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]"
            lines.append(
                f"{p['system_a']:>18} vs {p['system_b']:<18} {p['n']:>5} {p['wins']:>5} {p['ties']:>5} "
                f"{p['both_bad']:>5} {p['losses']:>5}  {wr}"
            )
        if body["bradley_terry"]:
            lines.append("Bradley-Terry: " + ", ".join(f"{b['rank']}. {b['system']} ({b['log_strength']:+.3f})" for b in body["bradley_terry"]))
        a = body["agreement"]["krippendorff_alpha"]
        lines.append(f"Krippendorff's alpha: {'-' if a is None else f'{a:.3f}'} over {body['agreement']['units']} units")
    return "\n".join(lines)


def write_exports(session, study, out_dir: str | Path, n_boot: int = 2000, confidence: float = 0.95,
                  exclude=(), min_gold_accuracy: float | None = None) -> dict[str, Path]:
    """Write results.json, votes.csv, votes.json and winrate.png into ``out_dir``.

    The results leave out the excluded annotators (listed in results.json); the vote log keeps
    every vote. Raises LookupError for a name in ``exclude`` that is not in the study.
    """
    from instructengine.runs import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    res = study_results(session, study, n_boot=n_boot, confidence=confidence, exclude=exclude,
                        min_gold_accuracy=min_gold_accuracy)
    rows = vote_log(session, study, include_undone=True)
    paths = {
        "results": atomic_write_json(out / "results.json", res),
        "votes_csv": atomic_write_text(out / "votes.csv", votes_csv(rows, list(study.criteria))),
        "votes_json": atomic_write_text(out / "votes.json", json.dumps(rows, indent=1) + "\n"),
    }
    winrate_chart(res, out / "winrate.png")
    paths["chart"] = out / "winrate.png"
    return paths
