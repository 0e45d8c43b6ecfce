"""The review web app (FastAPI): annotator pages and API, admin page and API.

Routes (every token is a secret from ``tokens.json``; unknown tokens, and tasks of another
annotator, answer 404 without saying which part was wrong):

* ``GET /a/{token}`` annotator page; ``GET /admin/{token}`` admin page; ``/static/*`` the
  package's own CSS/JS.
* ``GET  /api/a/{token}/state``                  study text, questions, progress, the current task
  (handing a task out records when it was served)
* ``GET  /api/a/{token}/tasks/{id}/{left|right}`` the image of one side of one of *your* tasks
* ``POST /api/a/{token}/votes``  ``{task_id, choice, criteria}``  only for the current task, once
  it was served and both its images fetched (repeat-safe: same vote -> 200 "duplicate"; a
  different vote on a voted task -> 409, undo first)
* ``POST /api/a/{token}/undo``   ``{task_id}``  takes back your latest vote, if it is that task's
* ``POST /api/a/{token}/flags``  ``{task_id, side, reason, note}``  broken/unsafe image report
* ``GET  /api/admin/{token}/results`` | ``/chart.png`` (both take ``?exclude=NAME``, repeatable)
  | ``/votes.csv`` | ``/votes.json``

Unauthenticated requests cost little: a body over ``server.max_body_bytes`` is refused (413)
from its declared length or while it streams, before any parsing; POST routes check the token
before reading the body at all; errors name the field and never echo the input back.

Images are read only from the metadata-free copies registered in the database at study creation
(:mod:`.images`), re-checked on each read; no part of a request is joined to a path. Pages
render all data with ``textContent`` and are served with a strict Content-Security-Policy
(scripts and styles from this origin only), so prompts and names cannot inject markup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from datetime import timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Request  # module level: endpoint annotations are resolved from this module's globals
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from instructengine.humaneval.config import ResultsConfig, ServerConfig

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: the largest id a database integer column holds (SQLite and PostgreSQL BIGINT)
MAX_ID = 2**63 - 1
TaskId = Annotated[int, Field(ge=1, le=MAX_ID, description="Id of one of the annotator's tasks.")]
Choice = Literal["left", "right", "tie", "both_bad"]


class _Body(BaseModel):
    # strict: `true` is not task 1, "1" and 1.0 are not ids
    model_config = ConfigDict(extra="forbid", strict=True)


class VoteIn(_Body):
    task_id: TaskId
    choice: Choice = Field(description="Overall choice (one of the study's choices).")
    criteria: dict[str, Choice] = Field(
        default_factory=dict, description="Choice per study criterion (all of them when the study has criteria)."
    )


class UndoIn(_Body):
    task_id: TaskId = Field(description="The task whose vote to take back (must be the annotator's latest vote).")


class FlagIn(_Body):
    task_id: TaskId
    side: Literal["left", "right"] = Field(description="Which image is reported.")
    reason: Literal["broken", "unsafe"] = Field(description="Why it is reported.")
    note: str = Field("", max_length=500, description="Optional free text.")


def _short(v: Any, n: int = 32) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def errors_text(errors: list[dict], fields: set[str] | None = None) -> str:
    """One line naming each bad field and what is allowed, without the input values.

    Unknown field names (``extra_forbidden``) are not repeated either: they are part of the input.
    """
    parts = []
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
        if e.get("type") == "extra_forbidden":
            allowed = f" (allowed: {', '.join(sorted(fields))})" if fields else ""
            parts.append(f"unknown field{allowed}")
            continue
        where = ".".join(_short(x) for x in loc) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


def _parse(model: type[_Body], raw: bytes):
    from fastapi import HTTPException

    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as err:
        errs = err.errors(include_url=False, include_input=False, include_context=False)
        raise HTTPException(status_code=422, detail=errors_text(errs, set(model.model_fields))) from None


class _BodyLimit:
    """Pure ASGI middleware: refuse a request body over ``limit`` bytes (413) without buffering it.

    A declared ``Content-Length`` over the limit is answered at once, before the app runs; a
    streamed (chunked) body is counted as it arrives and reading it fails with 413 past the limit.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _detail(self) -> bytes:
        return json.dumps({"detail": f"request body over {self.limit} bytes (server.max_body_bytes)"}).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
        if declared is not None and (declared < 0 or declared > self.limit):
            status = 400 if declared < 0 else 413
            body = self._detail() if status == 413 else b'{"detail": "bad Content-Length"}'
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited():
            nonlocal seen
            from starlette.exceptions import HTTPException

            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(status_code=413, detail=json.loads(self._detail())["detail"])
            return msg

        await self.app(scope, limited, send)


class _SecurityHeaders:
    """Pure ASGI middleware adding the CSP and friends to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        private = path.startswith(("/api/", "/a/", "/admin/"))

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = [(k, v) for k, v in msg.get("headers", [])]
                names = {k.lower() for k, _ in headers}
                headers += [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
                if private and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, send_with_headers)


def _static_dir() -> Path:
    return Path(str(resources.files("instructengine.humaneval") / "static"))


def _aware(t):
    return None if t is None else (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t)


def create_app(database_url: str, server: ServerConfig | None = None, results: ResultsConfig | None = None):
    """A FastAPI app serving every study in the database at ``database_url``.

    ``server`` gives the request-body limit; ``results`` the confidence level, the default
    exclusions and the gold-accuracy rule of the live admin view (defaults when omitted).

    Raises:
        db.SchemaError: the database was made by an older version of the app.
    """
    from fastapi import FastAPI, HTTPException, Query
    from fastapi import Path as PathParam
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from sqlalchemy import exists, func, select, update
    from sqlalchemy.exc import IntegrityError

    from instructengine.humaneval import db
    from instructengine.humaneval import results as res
    from instructengine.humaneval.images import ServedImageError, read_served_image

    server = server or ServerConfig()
    results = results or ResultsConfig()
    engine = db.make_engine(database_url)
    db.check_schema(engine)
    db.Base.metadata.create_all(engine)
    reader, writer = db.make_sessions(engine)
    # SQLite has one writer at a time; queueing writers on a lock here (FIFO-ish, no sleeping)
    # instead of in SQLite's busy handler (which sleeps in growing steps) keeps tail latency low.
    write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    static = _static_dir()
    app = FastAPI(title="InstructEngine review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=static), name="static")
    app.add_middleware(_BodyLimit, limit=server.max_body_bytes)
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": errors_text(list(exc.errors()))}, status_code=422)

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

    def require_annotator(token: str) -> None:
        with reader() as s:
            annotator_of(s, token)

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

    def image_of(s, task, side: str):
        first = (side == "left") == task.a_on_left  # system A, or a gold item's better image
        if task.comparison_id is not None:
            comp = s.get(db.Comparison, task.comparison_id)
            system_id = comp.system_a_id if first else comp.system_b_id
            return s.scalar(select(db.Image).where(db.Image.system_id == system_id, db.Image.item_id == comp.item_id))
        gold = s.get(db.GoldItem, task.gold_id)
        return s.get(db.Image, gold.better_image_id if first else gold.worse_image_id)

    def current_task_of(s, ann):
        return s.scalar(
            select(db.Task)
            .where(db.Task.annotator_id == ann.id, ~exists().where(db.Vote.task_id == db.Task.id))
            .order_by(db.Task.position)
            .limit(1)
        )

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
            t = current_task_of(s, ann)
            last = s.scalar(
                select(db.Vote.task_id).where(db.Vote.annotator_id == ann.id).order_by(db.Vote.id.desc()).limit(1)
            )
            task = None
            if t is not None:
                if t.comparison_id is not None:
                    prompt = s.scalar(
                        select(db.Item.prompt).join(db.Comparison, db.Comparison.item_id == db.Item.id)
                        .where(db.Comparison.id == t.comparison_id)
                    )
                else:
                    prompt = s.scalar(select(db.GoldItem.prompt).where(db.GoldItem.id == t.gold_id))
                base = f"/api/a/{token}/tasks/{t.id}"
                task = {"id": t.id, "position": t.position, "prompt": prompt,
                        "left": f"{base}/left", "right": f"{base}/right"}
        if t is not None and t.served_at is None:  # the time on task starts when it is first handed out
            with write_lock, writer() as w, w.begin():
                w.execute(update(db.Task).where(db.Task.id == t.id, db.Task.served_at.is_(None))
                          .values(served_at=db.utcnow()))
        questions = study.questions or {}
        return {
            "study": study.name, "annotator": ann.name, "instructions": study.instructions,
            "criteria": list(study.criteria), "choices": list(study.choices),
            "questions": [{"name": n, "text": questions.get(n, n)} for n in [*study.criteria, "overall"]],
            "progress": {"done": done, "total": total}, "task": task, "last_vote_task_id": last,
        }

    @app.get("/api/a/{token}/tasks/{task_id}/{side}")
    def task_image(token: str, side: Literal["left", "right"],
                   task_id: int = PathParam(ge=1, le=MAX_ID, description="Task id.")):
        column = db.Task.left_fetched_at if side == "left" else db.Task.right_fetched_at
        with reader() as s:
            ann, study = annotator_of(s, token)
            task = own_task(s, ann, task_id)
            image = image_of(s, task, side)
            fetched = task.left_fetched_at if side == "left" else task.right_fetched_at
        if fetched is None:  # the vote check needs to know both images were requested
            with write_lock, writer() as w, w.begin():
                w.execute(update(db.Task).where(db.Task.id == task.id, column.is_(None)).values({column: db.utcnow()}))
        try:
            data = read_served_image(image.path, image.sha256, study.images_dir)
        except ServedImageError as err:
            log.error("registered image id %s (task %s) not served: %s", image.id, task.id, err)
            raise HTTPException(status_code=410, detail="this image is missing on the server; please report it") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def check_choices(study, body: VoteIn) -> None:
        allowed = list(study.choices)
        quoted = ", ".join(repr(c) for c in allowed[:-1]) + f" or {allowed[-1]!r}"
        if body.choice not in allowed:
            raise HTTPException(status_code=422, detail=f"choice: Input should be {quoted} for this study")
        wanted, given = set(study.criteria), set(body.criteria)
        if wanted != given:
            parts = []
            if wanted - given:
                parts.append(f"missing {sorted(wanted - given)}")
            if given - wanted:
                parts.append(f"unknown {sorted(_short(g) for g in given - wanted)[:5]}")
            raise HTTPException(
                status_code=422,
                detail=f"criteria must be exactly {sorted(wanted)} for this study: " + ", ".join(parts),
            )
        bad = [c for c, v in body.criteria.items() if v not in allowed]
        if bad:
            raise HTTPException(status_code=422, detail=f"criteria.{bad[0]}: Input should be {quoted} for this study")

    def record_vote(token: str, body: VoteIn):
        with write_lock, writer() as s, s.begin():
            ann, study = annotator_of(s, token)
            task = own_task(s, ann, body.task_id)
            check_choices(study, body)
            existing = s.scalar(select(db.Vote).where(db.Vote.task_id == task.id))
            if existing is None:
                current = current_task_of(s, ann)
                if current is None or current.id != task.id:
                    raise HTTPException(status_code=409, detail=(
                        f"task {task.id} is not shown to you now; reload the page to get your current task"))
                if task.served_at is None:
                    raise HTTPException(status_code=409, detail=(
                        f"task {task.id} was not shown to you yet; reload the page"))
                if task.left_fetched_at is None or task.right_fetched_at is None:
                    raise HTTPException(status_code=409, detail=(
                        f"the images of task {task.id} were not loaded; reload the page and look at both"))
                now = db.utcnow()
                ms = max(0, int(round((now - _aware(task.served_at)).total_seconds() * 1000)))
                v = db.Vote(task_id=task.id, annotator_id=ann.id, choice=body.choice, criteria=dict(body.criteria),
                            time_on_task_ms=ms, created_at=now)
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

    # POST routes: token first (404 before a byte of the body is read), then the body (limited
    # by _BodyLimit), parsed strictly, then the work in a thread.
    @app.post("/api/a/{token}/votes")
    async def vote(token: str, request: Request):
        await run_in_threadpool(require_annotator, token)
        body = _parse(VoteIn, await request.body())
        return await run_in_threadpool(record_vote, token, body)

    def record_undo(token: str, body: UndoIn):
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
                                criteria=v.criteria, time_on_task_ms=v.time_on_task_ms, created_at=v.created_at))
            s.delete(v)
            task.served_at = None  # served again when the page reloads: the clock restarts
            return {"status": "undone", "task_id": task.id}

    @app.post("/api/a/{token}/undo")
    async def undo(token: str, request: Request):
        await run_in_threadpool(require_annotator, token)
        body = _parse(UndoIn, await request.body())
        return await run_in_threadpool(record_undo, token, body)

    def record_flag(token: str, body: FlagIn):
        with write_lock, writer() as s, s.begin():
            ann, _ = annotator_of(s, token)
            task = own_task(s, ann, body.task_id)
            existing = s.scalar(
                select(db.Flag).where(db.Flag.task_id == task.id, db.Flag.side == body.side, db.Flag.reason == body.reason)
            )
            if existing is not None:
                return {"status": "duplicate", "flag_id": existing.id}
            f = db.Flag(task_id=task.id, annotator_id=ann.id, image_id=image_of(s, task, body.side).id,
                        side=body.side, reason=body.reason, note=body.note)
            s.add(f)
            s.flush()
            return {"status": "recorded", "flag_id": f.id}

    @app.post("/api/a/{token}/flags")
    async def flag(token: str, request: Request):
        await run_in_threadpool(require_annotator, token)
        body = _parse(FlagIn, await request.body())
        return await run_in_threadpool(record_flag, token, body)

    # ------------------------------------------------------------------ admin API
    def admin_view(s, study, n_boot: int, exclude: list[str] | None):
        if exclude is None:  # the configured list (names of other studies in the database are skipped)
            names = set(s.scalars(select(db.Annotator.name).where(db.Annotator.study_id == study.id)))
            chosen = [n for n in results.exclude_annotators if n in names]
        else:
            chosen = [n for n in exclude if n]  # "?exclude=" (empty) chooses none
        try:
            return res.study_results(s, study, n_boot=n_boot, confidence=results.confidence, exclude=chosen,
                                     min_gold_accuracy=results.min_gold_accuracy)
        except LookupError as err:
            raise HTTPException(status_code=422, detail=str(err)) from None

    @app.get("/api/admin/{token}/results")
    def admin_results(token: str, bootstrap: int = Query(1000, ge=100, le=20000),
                      exclude: list[str] | None = Query(None)):
        with reader() as s:
            study = study_of_admin(s, token)
            out = admin_view(s, study, bootstrap, exclude)
        return JSONResponse(json.loads(json.dumps(out, default=str)))

    @app.get("/api/admin/{token}/chart.png")
    def admin_chart(token: str, exclude: list[str] | None = Query(None)):
        with reader() as s:
            study = study_of_admin(s, token)
            out = admin_view(s, study, 100, exclude)
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
