"""Create a review study: read evaluation runs, lay out comparisons and tasks, issue secret links.

Layout (deterministic given ``study.seed``):

* a *comparison* is one item (prompt, seed) and one pair of systems (every pair, or the
  reference against each other system);
* comparisons are put in a random global order; the comparison at global position ``p`` goes to
  annotators ``(p*r + i) mod n`` for ``i < r`` (``r`` = annotators per item, ``n`` annotators),
  so every annotator gets the same number of tasks (+-1) and ``r`` distinct annotators judge it;
* sides alternate between a comparison's annotators (a random start), so each system appears on
  the left about half the time, and within one comparison left/right is balanced;
* each annotator's queue is the global order rotated by ``a * C / n`` (``C`` comparisons): a
  comparison seen first (fresh) by one annotator is seen late (tired) by another, which balances
  order effects across annotators.

Writes ``<study_dir>/tokens.json`` (mode 0600; the only place the secret links are kept, the
database stores hashes), ``config.yaml`` and ``manifest.json``.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from instructengine.humaneval.config import ReviewConfig
from instructengine.humaneval.inputs import StudyInputError, check_shared, media_type, read_eval_run

__all__ = ["CreatedStudy", "create_study", "plan_tasks"]

log = logging.getLogger(__name__)

_METADATA_KEYS_OK = {"dpi", "gamma", "srgb", "chromaticity", "aspect", "transparency", "icc_profile", "exif"}


@dataclass
class CreatedStudy:
    name: str
    database_url: str
    admin_token: str
    annotator_tokens: dict[str, str]
    n_systems: int
    n_items: int
    n_comparisons: int
    n_tasks: int
    tokens_path: Path

    def links(self, base_url: str = "") -> dict[str, str]:
        out = {"admin": f"{base_url}/admin/{self.admin_token}"}
        out.update({name: f"{base_url}/a/{tok}" for name, tok in self.annotator_tokens.items()})
        return out


def plan_tasks(n_comparisons: int, n_annotators: int, per_item: int, seed: int) -> list[list[tuple[int, int, bool]]]:
    """Per annotator, its queue as (comparison index, position, a_on_left), in queue order.

    Pure function (tested on its own): balanced loads, ``per_item`` distinct annotators per
    comparison, alternating sides within a comparison, rotated order across annotators.
    """
    import numpy as np

    if per_item > n_annotators:
        raise ValueError(f"per_item={per_item} exceeds n_annotators={n_annotators}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_comparisons)  # global position -> comparison index
    start_left = rng.integers(0, 2, size=n_comparisons).astype(bool)
    per_annotator: list[list[tuple[int, int, bool]]] = [[] for _ in range(n_annotators)]
    for p, c in enumerate(order.tolist()):
        for i in range(per_item):
            a = (p * per_item + i) % n_annotators
            a_on_left = bool(start_left[c]) ^ bool(i % 2)
            per_annotator[a].append((p, c, a_on_left))
    queues = []
    for a, tasks in enumerate(per_annotator):
        offset = (a * n_comparisons) // n_annotators
        tasks.sort(key=lambda t: (t[0] - offset) % n_comparisons)
        queues.append([(c, pos, left) for pos, (_, c, left) in enumerate(tasks)])
    return queues


def _metadata_keys(path: Path) -> set[str]:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            keys = set(getattr(im, "text", {}) or {}) | set(im.info)
    except OSError as err:
        raise StudyInputError(f"image {str(path)!r} cannot be read: {err}") from None
    return {k for k in keys if k.lower() not in _METADATA_KEYS_OK}


def create_study(cfg: ReviewConfig) -> CreatedStudy:
    """Build a study from ``cfg.study`` into the study database and folder.

    Raises:
        StudyInputError: the runs cannot be compared (see :func:`check_shared`), an image cannot
            be read, or the database already holds a study of this name.
    """
    import numpy as np
    from sqlalchemy import select

    from instructengine.humaneval import db
    from instructengine.runs import StageDir, atomic_write_json

    sc = cfg.study
    names = sc.names or [None] * len(sc.runs)
    runs = [read_eval_run(p, n) for p, n in zip(sc.runs, names)]
    keys = check_shared(runs, sc.seeds)
    system_names = [r.name for r in runs]
    rng = np.random.default_rng(sc.seed)
    prompt_ids = sorted({i for i, _ in keys})
    if sc.max_prompts is not None and sc.max_prompts < len(prompt_ids):
        chosen = set(rng.choice(prompt_ids, size=sc.max_prompts, replace=False).tolist())
        keys = [k for k in keys if k[0] in chosen]

    if sc.pairs == "reference":
        ref = sc.reference or system_names[0]
        if ref not in system_names:
            raise StudyInputError(f"study.reference {ref!r} is not one of the systems {system_names}")
        r = system_names.index(ref)
        pairs = [(r, j) for j in range(len(runs)) if j != r]
    else:
        pairs = list(itertools.combinations(range(len(runs)), 2))
    comparisons = [(k, a, b) for k in keys for (a, b) in pairs]
    queues = plan_tasks(len(comparisons), len(sc.annotators), sc.annotators_per_item, sc.seed)

    # Files whose PNG text chunks could name their source break blindness; count and warn.
    meta_counts: dict[str, int] = {}
    for run in runs:
        for k in keys:
            for m in _metadata_keys(run.images[k]):
                meta_counts[m] = meta_counts.get(m, 0) + 1
    if meta_counts:
        log.warning("images carry metadata that may reveal their source: %s", meta_counts)
    # Images the generator's safety checker flagged stay in the study (dropping them would bias
    # the comparison); they are counted so the organiser knows annotators may see them.
    nsfw_counts = {r.name: sum(1 for k in keys if k in r.nsfw_flagged) for r in runs}
    if any(nsfw_counts.values()):
        log.warning("images flagged by the generator's safety checker, per system: %s", nsfw_counts)

    study_dir = Path(cfg.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    stage = StageDir(study_dir.parent, study_dir.name)
    manifest = stage.new_manifest(cfg)
    url = cfg.resolved_database_url()
    engine = db.make_engine(url)
    db.Base.metadata.create_all(engine)
    _, writer = db.make_sessions(engine)
    admin_token = secrets.token_urlsafe(24)
    tokens = {name: secrets.token_urlsafe(24) for name in sc.annotators}
    with manifest.timed("create"), writer() as s, s.begin():
        if s.scalar(select(db.Study).where(db.Study.name == sc.name)) is not None:
            raise StudyInputError(
                f"the database {url!r} already holds a study named {sc.name!r}; choose another study.name or study_dir"
            )
        study = db.Study(
            name=sc.name, admin_token_hash=db.hash_token(admin_token), criteria=list(sc.criteria),
            instructions=sc.instructions, config=cfg.model_dump(mode="json"),
        )
        s.add(study)
        s.flush()
        systems = [
            db.System(study_id=study.id, name=r.name, position=i, run_path=str(r.path), generation=r.generation)
            for i, r in enumerate(runs)
        ]
        s.add_all(systems)
        items = {}
        for k in keys:
            prompt, category = runs[0].prompts[k[0]]
            items[k] = db.Item(study_id=study.id, prompt_index=k[0], seed=k[1], prompt=prompt, category=category)
        s.add_all(list(items.values()))
        s.flush()
        s.add_all(
            db.Image(system_id=systems[i].id, item_id=items[k].id, path=str(run.images[k]),
                     media_type=media_type(run.images[k]))
            for i, run in enumerate(runs) for k in keys
        )
        comp_rows = [
            db.Comparison(study_id=study.id, item_id=items[k].id, system_a_id=systems[a].id, system_b_id=systems[b].id)
            for k, a, b in comparisons
        ]
        s.add_all(comp_rows)
        annotators = [
            db.Annotator(study_id=study.id, name=name, token_hash=db.hash_token(tok)) for name, tok in tokens.items()
        ]
        s.add_all(annotators)
        s.flush()
        n_tasks = 0
        for ann, queue in zip(annotators, queues):
            s.add_all(
                db.Task(annotator_id=ann.id, comparison_id=comp_rows[c].id, position=pos, a_on_left=left)
                for c, pos, left in queue
            )
            n_tasks += len(queue)
    engine.dispose()

    tokens_path = study_dir / "tokens.json"
    existing = {}
    if tokens_path.exists():
        import json

        existing = json.loads(tokens_path.read_text())
    existing[sc.name] = {
        "admin": {"token": admin_token, "path": f"/admin/{admin_token}"},
        "annotators": {n: {"token": t, "path": f"/a/{t}"} for n, t in tokens.items()},
    }
    atomic_write_json(tokens_path, existing)
    os.chmod(tokens_path, 0o600)

    manifest.inputs = {r.name: str(r.path) for r in runs}
    manifest.outputs = {"database": url, "tokens": str(tokens_path)}
    manifest.count_in = len(keys) * len(runs)
    manifest.count_out = n_tasks
    manifest.extra = {
        "study": sc.name, "systems": system_names, "items": len(keys), "pairs": len(pairs),
        "comparisons": len(comparisons), "annotators": len(sc.annotators),
        "annotators_per_item": sc.annotators_per_item, "tasks": n_tasks,
        "tasks_per_annotator": [len(q) for q in queues], "image_metadata_keys": meta_counts,
        "nsfw_flagged_images": nsfw_counts,
    }
    stage.write_manifest(manifest)
    return CreatedStudy(
        name=sc.name, database_url=url, admin_token=admin_token, annotator_tokens=tokens,
        n_systems=len(runs), n_items=len(keys), n_comparisons=len(comparisons), n_tasks=n_tasks,
        tokens_path=tokens_path,
    )
