"""The review web app (FastAPI): annotator pages and API, admin page and API.

Routes (every token is a secret from ``tokens.json``; unknown tokens, and tasks of another
annotator, answer 404 without saying which part was wrong):

* ``GET /a/{token}`` annotator page; ``GET /admin/{token}`` admin page; ``/static/*`` the
  package's own CSS/JS.
* ``GET  /api/a/{token}/state``                  study text, criteria, progress, the next task
* ``GET  /api/a/{token}/tasks/{id}/{left|right}`` the image of one side of one of *your* tasks
* ``POST /api/a/{token}/votes``  ``{task_id, choice, criteria}``  (repeat-safe: same vote -> 200
  "duplicate"; a different vote on a voted task -> 409, undo first)
* ``POST /api/a/{token}/undo``   ``{task_id}``  takes back your latest vote, if it is that task's
* ``POST /api/a/{token}/flags``  ``{task_id, side, reason, note}``  broken/unsafe image report
* ``GET  /api/admin/{token}/results`` | ``/chart.png`` | ``/votes.csv`` | ``/votes.json``

Images are read only from paths registered in the database at study creation; no part of a
request is joined to a path. Pages render all data with ``textContent`` and are served with a
strict Content-Security-Policy (scripts and styles from this origin only), so prompts and
names cannot inject markup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from instructengine.humaneval.config import CHOICES

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int = Field(description="Id of one of the annotator's tasks.")
    choice: Literal["left", "right", "tie", "both_bad"] = Field(description="Overall choice.")
    criteria: dict[str, Literal["left", "right", "tie", "both_bad"]] = Field(
        default_factory=dict, description="Choice per study criterion (all of them when the study has criteria)."
    )


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int = Field(description="The task whose vote to take back (must be the annotator's latest vote).")


class FlagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: int = Field(description="Id of one of the annotator's tasks.")
    side: Literal["left", "right"] = Field(description="Which image is reported.")
    reason: Literal["broken", "unsafe"] = Field(description="Why it is reported.")
    note: str = Field("", max_length=500, description="Optional free text.")


def _static_dir() -> Path:
    return Path(str(resources.files("instructengine.humaneval") / "static"))


def create_app(database_url: str):
    """A FastAPI app serving every study in the database at ``database_url``."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from sqlalchemy import exists, func, select
    from sqlalchemy.exc import IntegrityError

    from instructengine.humaneval import db
    from instructengine.humaneval import results as res

    engine = db.make_engine(database_url)
    db.Base.metadata.create_all(engine)
    reader, writer = db.make_sessions(engine)
    # SQLite has one writer at a time; queueing writers on a lock here (FIFO-ish, no sleeping)
    # instead of in SQLite's busy handler (which sleeps in growing steps) keeps tail latency low.
    write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    static = _static_dir()
    app = FastAPI(title="InstructEngine review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path.startswith("/api/") or request.url.path.startswith(("/a/", "/admin/")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def not_found(what: str = "unknown link") -> HTTPException:
        return HTTPException(status_code=404, detail=what)

    def annotator_of(s, token: str):
        row = s.execute(
            select(db.Annotator, db.Study)
            .join(db.Study, db.Annotator.study_id == db.Study.id)
            .where(db.Annotator.token_hash == db.hash_token(token))
        ).first()
        if row is None:
            raise not_found()
        return row

    def study_of_admin(s, token: str):
        study = s.scalar(select(db.Study).where(db.Study.admin_token_hash == db.hash_token(token)))
        if study is None:
            raise not_found()
        return study

    def own_task(s, ann, task_id: int):
        task = s.get(db.Task, task_id)
        if task is None or task.annotator_id != ann.id:
            raise not_found(f"task {task_id} is not one of your tasks")
        return task

    def page(name: str) -> HTMLResponse:
        return HTMLResponse((static / name).read_text(encoding="utf-8"))

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page("index.html")

    def page_or_404(name: str, check, token: str) -> HTMLResponse:
        with reader() as s:
            try:
                check(s, token)
            except HTTPException:
                return HTMLResponse((static / "notfound.html").read_text(encoding="utf-8"), status_code=404)
        return page(name)

    @app.get("/a/{token}", response_class=HTMLResponse)
    def annotator_page(token: str):
        return page_or_404("annotate.html", annotator_of, token)

    @app.get("/admin/{token}", response_class=HTMLResponse)
    def admin_page(token: str):
        return page_or_404("admin.html", study_of_admin, token)

    # ------------------------------------------------------------------ annotator API
    @app.get("/api/a/{token}/state")
    def state(token: str):
        with reader() as s:
            ann, study = annotator_of(s, token)
            total = s.scalar(select(func.count(db.Task.id)).where(db.Task.annotator_id == ann.id))
            done = s.scalar(select(func.count(db.Vote.id)).where(db.Vote.annotator_id == ann.id))
            row = s.execute(
                select(db.Task, db.Item.prompt)
                .join(db.Comparison, db.Task.comparison_id == db.Comparison.id)
                .join(db.Item, db.Comparison.item_id == db.Item.id)
                .where(db.Task.annotator_id == ann.id, ~exists().where(db.Vote.task_id == db.Task.id))
                .order_by(db.Task.position)
                .limit(1)
            ).first()
            last = s.scalar(
                select(db.Vote.task_id).where(db.Vote.annotator_id == ann.id).order_by(db.Vote.id.desc()).limit(1)
            )
            task = None
            if row is not None:
                t, prompt = row
                base = f"/api/a/{token}/tasks/{t.id}"
                task = {"id": t.id, "position": t.position, "prompt": prompt,
                        "left": f"{base}/left", "right": f"{base}/right"}
            return {
                "study": study.name, "annotator": ann.name, "instructions": study.instructions,
                "criteria": list(study.criteria), "choices": list(CHOICES),
                "progress": {"done": done, "total": total}, "task": task, "last_vote_task_id": last,
            }

    @app.get("/api/a/{token}/tasks/{task_id}/{side}")
    def task_image(token: str, task_id: int, side: Literal["left", "right"]):
        with reader() as s:
            ann, _ = annotator_of(s, token)
            task = own_task(s, ann, task_id)
            comp = s.get(db.Comparison, task.comparison_id)
            system_id = comp.system_a_id if (side == "left") == task.a_on_left else comp.system_b_id
            image = s.scalar(
                select(db.Image).where(db.Image.system_id == system_id, db.Image.item_id == comp.item_id)
            )
        try:
            data = Path(image.path).read_bytes()  # a registered path, never one from the request
        except OSError:
            log.error("registered image %s (image id %s) cannot be read", image.path, image.id)
            raise HTTPException(status_code=410, detail="this image is missing on the server; please report it") from None
        return Response(data, media_type=image.media_type, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/a/{token}/votes")
    def vote(token: str, body: VoteIn):
        with write_lock, writer() as s, s.begin():
            ann, study = annotator_of(s, token)
            task = own_task(s, ann, body.task_id)
            wanted, given = set(study.criteria), set(body.criteria)
            if wanted != given:
                parts = []
                if wanted - given:
                    parts.append(f"missing {sorted(wanted - given)}")
                if given - wanted:
                    parts.append(f"unknown {sorted(given - wanted)}")
                raise HTTPException(
                    status_code=422,
                    detail=f"criteria must be exactly {sorted(wanted)} for this study: " + ", ".join(parts),
                )
            existing = s.scalar(select(db.Vote).where(db.Vote.task_id == task.id))
            if existing is None:
                v = db.Vote(task_id=task.id, annotator_id=ann.id, choice=body.choice, criteria=dict(body.criteria))
                try:
                    with s.begin_nested():
                        s.add(v)
                except IntegrityError:
                    # a concurrent submission for this task won the race (possible where writes are not
                    # serialised up front, e.g. PostgreSQL); the unique task_id kept it to one vote
                    existing = s.scalar(select(db.Vote).where(db.Vote.task_id == task.id))
                else:
                    return {"status": "recorded", "task_id": task.id, "vote_id": v.id}
            if existing.choice == body.choice and (existing.criteria or {}) == body.criteria:
                return {"status": "duplicate", "task_id": task.id, "vote_id": existing.id}
            raise HTTPException(
                status_code=409, detail=f"task {task.id} already has a different vote; undo it first to change it"
            )

    @app.post("/api/a/{token}/undo")
    def undo(token: str, body: UndoIn):
        with write_lock, writer() as s, s.begin():
            ann, _ = annotator_of(s, token)
            task = own_task(s, ann, body.task_id)
            v = s.scalar(select(db.Vote).where(db.Vote.task_id == task.id))
            if v is None:
                return {"status": "not_voted", "task_id": task.id}
            latest = s.scalar(select(func.max(db.Vote.id)).where(db.Vote.annotator_id == ann.id))
            if v.id != latest:
                raise HTTPException(status_code=409, detail="only your latest vote can be undone")
            s.add(db.UndoneVote(task_id=v.task_id, annotator_id=v.annotator_id, choice=v.choice,
                                criteria=v.criteria, created_at=v.created_at))
            s.delete(v)
            return {"status": "undone", "task_id": task.id}

    @app.post("/api/a/{token}/flags")
    def flag(token: str, body: FlagIn):
        with write_lock, writer() as s, s.begin():
            ann, _ = annotator_of(s, token)
            task = own_task(s, ann, body.task_id)
            existing = s.scalar(
                select(db.Flag).where(db.Flag.task_id == task.id, db.Flag.side == body.side, db.Flag.reason == body.reason)
            )
            if existing is not None:
                return {"status": "duplicate", "flag_id": existing.id}
            comp = s.get(db.Comparison, task.comparison_id)
            system_id = comp.system_a_id if (body.side == "left") == task.a_on_left else comp.system_b_id
            image_id = s.scalar(
                select(db.Image.id).where(db.Image.system_id == system_id, db.Image.item_id == comp.item_id)
            )
            f = db.Flag(task_id=task.id, annotator_id=ann.id, image_id=image_id, side=body.side,
                        reason=body.reason, note=body.note)
            s.add(f)
            s.flush()
            return {"status": "recorded", "flag_id": f.id}

    # ------------------------------------------------------------------ admin API
    @app.get("/api/admin/{token}/results")
    def admin_results(token: str, bootstrap: int = Query(1000, ge=100, le=20000)):
        with reader() as s:
            study = study_of_admin(s, token)
            out = res.study_results(s, study, n_boot=bootstrap)
        return JSONResponse(json.loads(json.dumps(out, default=str)))

    @app.get("/api/admin/{token}/chart.png")
    def admin_chart(token: str):
        with reader() as s:
            study = study_of_admin(s, token)
            out = res.study_results(s, study, n_boot=100)
        return Response(res.winrate_chart(out), media_type="image/png")

    @app.get("/api/admin/{token}/votes.csv")
    def admin_votes_csv(token: str, include_undone: bool = False):
        with reader() as s:
            study = study_of_admin(s, token)
            rows = res.vote_log(s, study, include_undone=include_undone)
            text = res.votes_csv(rows, list(study.criteria))
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="votes.csv"'})

    @app.get("/api/admin/{token}/votes.json")
    def admin_votes_json(token: str, include_undone: bool = False):
        with reader() as s:
            study = study_of_admin(s, token)
            rows = res.vote_log(s, study, include_undone=include_undone)
        return JSONResponse(rows, headers={"Content-Disposition": 'attachment; filename="votes.json"'})

    return app
