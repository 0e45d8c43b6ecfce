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
  order effects across annotators;
* gold items (known-answer pairs: a study image vs a blurred copy of itself, or configured pairs)
  go to every annotator, one in each stretch of ``len(queue) / n_gold`` positions
  (:func:`interleave_gold`), better side alternating between annotators.

Every image is copied, metadata-free, into ``<study_dir>/images`` (:mod:`.images`); only those
copies are registered and served.

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
from instructengine.humaneval.inputs import StudyInputError, check_shared, read_eval_run

__all__ = ["CreatedStudy", "create_study", "interleave_gold", "plan_tasks"]

log = logging.getLogger(__name__)


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


def interleave_gold(n_real: int, n_gold: int, seed: int) -> list[int]:
    """Queue positions (of ``n_real + n_gold``) for ``n_gold`` gold items, one per equal stretch.

    Pure function: gold item ``j`` lands at a random position in ``[j*T/g, (j+1)*T/g)`` (``T``
    positions, ``g`` gold items), so checks are spread over the whole session, never bunched.
    """
    import numpy as np

    total = n_real + n_gold
    rng = np.random.default_rng(seed)
    return [int(rng.integers(j * total // n_gold, (j + 1) * total // n_gold)) for j in range(n_gold)]


def create_study(cfg: ReviewConfig) -> CreatedStudy:
    """Build a study from ``cfg.study`` into the study database and folder.

    Raises:
        StudyInputError: the runs cannot be compared (see :func:`check_shared`), an image cannot
            be read, a gold pair's file is missing, or the database already holds a study of this name.
        db.SchemaError: the database was made by an older version of the app.
    """
    import numpy as np
    from sqlalchemy import select

    from instructengine.humaneval import db
    from instructengine.humaneval.images import clean_png, degraded_png, store_png
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
    try:
        db.check_schema(engine)
        db.Base.metadata.create_all(engine)
        reader, writer = db.make_sessions(engine)
        with reader() as s:
            if s.scalar(select(db.Study.id).where(db.Study.name == sc.name)) is not None:
                raise StudyInputError(
                    f"the database {url!r} already holds a study named {sc.name!r}; choose another study.name or study_dir"
                )
    except BaseException:
        engine.dispose()
        raise

    # Blindness: serve metadata-free PNG copies of the pixels, never the evaluation files.
    images_dir = (study_dir / "images").resolve()
    images_dir.mkdir(parents=True, exist_ok=True)
    stored: dict[tuple[int, tuple[int, int]], tuple[str, str, str]] = {}  # (run, key) -> (path, sha256, source)
    meta_counts: dict[str, int] = {}
    n_with_metadata = 0

    def copy_in(src: Path | bytes, label: str) -> tuple[str, str]:
        nonlocal n_with_metadata
        try:
            data, keys = clean_png(src)
        except OSError as err:
            raise StudyInputError(f"image {label!r} cannot be read: {err}") from None
        for k in keys:
            meta_counts[k] = meta_counts.get(k, 0) + 1
        n_with_metadata += bool(keys)
        path, digest = store_png(data, images_dir)
        return str(path), digest

    with manifest.timed("images"):
        for i, run in enumerate(runs):
            for k in keys:
                stored[(i, k)] = (*copy_in(run.images[k], str(run.images[k])), str(run.images[k]))
    if meta_counts:
        log.info("stripped metadata from %d images (keys: %s)", n_with_metadata, meta_counts)

    # Gold items: (kind, prompt, better (path, sha, source), worse (path, sha, source), description)
    gold_rng = np.random.default_rng([sc.seed, 1])
    gold: list[tuple[str, str, tuple, tuple, str]] = []
    sources = [(i, k) for i in range(len(runs)) for k in keys]
    if sc.gold.degraded > len(sources):
        raise StudyInputError(f"study.gold.degraded={sc.gold.degraded} exceeds the {len(sources)} study images")
    for j in gold_rng.choice(len(sources), size=sc.gold.degraded, replace=False).tolist() if sc.gold.degraded else []:
        i, k = sources[j]
        better = stored[(i, k)]
        worse_path, worse_sha = store_png(degraded_png(Path(better[0]).read_bytes(), sc.gold.degrade_blur), images_dir)
        desc = f"{runs[i].name} prompt {k[0]} seed {k[1]} vs its blurred copy"
        gold.append(("degraded", runs[0].prompts[k[0]][0], better, (str(worse_path), worse_sha, f"blurred {better[2]}"), desc))
    for n, pair in enumerate(sc.gold.pairs):
        files = {}
        for role in ("better", "worse"):
            f = Path(getattr(pair, role)).expanduser()
            if not f.is_file():
                raise StudyInputError(f"study.gold.pairs[{n}].{role} {str(f)!r} is not a file; give an image path")
            files[role] = (*copy_in(f, str(f)), str(f.resolve()))
        gold.append(("configured", pair.prompt, files["better"], files["worse"], f"configured pair {n}"))

    admin_token = secrets.token_urlsafe(24)
    tokens = {name: secrets.token_urlsafe(24) for name in sc.annotators}
    with manifest.timed("create"), writer() as s, s.begin():
        if s.scalar(select(db.Study).where(db.Study.name == sc.name)) is not None:
            raise StudyInputError(
                f"the database {url!r} already holds a study named {sc.name!r}; choose another study.name or study_dir"
            )
        study = db.Study(
            name=sc.name, admin_token_hash=db.hash_token(admin_token), criteria=sc.resolved_criteria(),
            questions=sc.resolved_questions(), choices=sc.resolved_choices(), protocol=sc.protocol,
            instructions=sc.resolved_instructions(), images_dir=str(images_dir), config=cfg.model_dump(mode="json"),
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
            db.Image(study_id=study.id, system_id=systems[i].id, item_id=items[k].id, path=stored[(i, k)][0],
                     sha256=stored[(i, k)][1], source_path=stored[(i, k)][2], media_type="image/png")
            for i in range(len(runs)) for k in keys
        )
        gold_rows = []
        for kind, prompt, better, worse, desc in gold:
            imgs = [db.Image(study_id=study.id, path=p, sha256=h, source_path=src, media_type="image/png")
                    for p, h, src in (better, worse)]
            s.add_all(imgs)
            s.flush()
            gold_rows.append(db.GoldItem(study_id=study.id, kind=kind, prompt=prompt, better_image_id=imgs[0].id,
                                         worse_image_id=imgs[1].id, source=desc))
        s.add_all(gold_rows)
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
        s.flush()
        n_tasks = 0
        gold_start = gold_rng.integers(0, 2, size=len(gold_rows)).astype(bool)
        for a, (ann, queue) in enumerate(zip(annotators, queues)):
            slots = set(interleave_gold(len(queue), len(gold_rows), seed=sc.seed * 1000 + a))
            gold_order = gold_rng.permutation(len(gold_rows)).tolist()
            real = iter(queue)
            for pos in range(len(queue) + len(gold_rows)):
                if pos in slots:
                    g = gold_order.pop()
                    s.add(db.Task(annotator_id=ann.id, gold_id=gold_rows[g].id, position=pos,
                                  a_on_left=bool(gold_start[g]) ^ bool(a % 2)))
                else:
                    c, _, left = next(real)
                    s.add(db.Task(annotator_id=ann.id, comparison_id=comp_rows[c].id, position=pos, a_on_left=left))
                n_tasks += 1
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
        "tasks_per_annotator": [len(q) + len(gold) for q in queues], "gold_items": len(gold),
        "protocol": sc.protocol, "images_dir": str(images_dir), "image_metadata_keys": meta_counts,
        "images_with_metadata_stripped": n_with_metadata, "nsfw_flagged_images": nsfw_counts,
    }
    stage.write_manifest(manifest)
    return CreatedStudy(
        name=sc.name, database_url=url, admin_token=admin_token, annotator_tokens=tokens,
        n_systems=len(runs), n_items=len(keys), n_comparisons=len(comparisons), n_tasks=n_tasks,
        tokens_path=tokens_path,
    )
