"""Database of review studies: SQLAlchemy models and an engine factory (SQLite WAL by default).

Tables: a study has systems, items (prompt, seed), the registered images (one per system and
item, plus the images of gold items; each a metadata-free PNG copy inside the study's image
folder, by absolute path and SHA-256), comparisons (an item and two systems), gold items
(known-answer pairs: a better and a worse image), annotators (secret tokens are stored only as
SHA-256 hashes) and tasks (one annotator's view of a comparison or of a gold item: its position
in that annotator's queue, which side is on the left, when it was first served and its images
fetched). ``votes`` holds the current vote of a task (at most one: ``task_id`` is unique, so a
repeated submission cannot double a vote) with its time on task; ``undone_votes`` archives votes
taken back with undo; ``flags`` holds broken/unsafe reports.

SQLite connections run in WAL mode with a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing on upgrade.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from instructengine.errors import UsageError

__all__ = [
    "Annotator",
    "Base",
    "Comparison",
    "Flag",
    "GoldItem",
    "Image",
    "SchemaError",
    "Item",
    "Study",
    "System",
    "Task",
    "UndoneVote",
    "Vote",
    "check_schema",
    "hash_token",
    "make_engine",
    "make_sessions",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def hash_token(token: str) -> str:
    """Tokens are stored hashed: a leaked database does not hand out working links."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    admin_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    criteria: Mapped[list] = mapped_column(JSON)
    #: question text per criterion and "overall", in the order asked
    questions: Mapped[dict] = mapped_column(JSON)
    #: answers allowed per question (a subset of config.CHOICES)
    choices: Mapped[list] = mapped_column(JSON)
    protocol: Mapped[str] = mapped_column(String(32))
    instructions: Mapped[str] = mapped_column(Text, default="")
    #: the only folder images are served from (absolute, resolved at creation)
    images_dir: Mapped[str] = mapped_column(Text)
    config: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class System(Base):
    __tablename__ = "systems"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    run_path: Mapped[str] = mapped_column(Text)
    generation: Mapped[dict] = mapped_column(JSON, default=dict)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("study_id", "prompt_index", "seed"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    prompt_index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(200), default="")


class Image(Base):
    """A registered image file: the only files the app ever reads from disk.

    ``path`` is a metadata-free PNG written at study creation inside the study's ``images_dir``;
    ``sha256`` is the digest of its bytes, checked on every read. System images have a system
    and an item; gold images have neither.
    """

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("system_id", "item_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    system_id: Mapped[int | None] = mapped_column(ForeignKey("systems.id"), index=True, nullable=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"), index=True, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    source_path: Mapped[str] = mapped_column(Text, default="")
    media_type: Mapped[str] = mapped_column(String(40), default="image/png")


class GoldItem(Base):
    """A known-answer pair (attention check): ``better`` must be judged better than ``worse``."""

    __tablename__ = "gold_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "degraded" | "configured"
    prompt: Mapped[str] = mapped_column(Text)
    better_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    worse_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    source: Mapped[str] = mapped_column(Text, default="")  # where it came from (admin only)


class Comparison(Base):
    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    system_a_id: Mapped[int] = mapped_column(ForeignKey("systems.id"))
    system_b_id: Mapped[int] = mapped_column(ForeignKey("systems.id"))


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)


class Task(Base):
    """One annotator's view of one comparison or gold item: queue position and side assignment.

    Exactly one of ``comparison_id`` and ``gold_id`` is set. ``a_on_left``: system A (or, for a
    gold item, the better image) is on the left. ``served_at``: when the task was first handed
    out as the annotator's current task (reset by undo); ``*_fetched_at``: first fetch of each
    image. A vote is accepted only for the current task once it was served with both images.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("annotator_id", "position"),
        UniqueConstraint("annotator_id", "comparison_id"),
        UniqueConstraint("annotator_id", "gold_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    comparison_id: Mapped[int | None] = mapped_column(ForeignKey("comparisons.id"), index=True, nullable=True)
    gold_id: Mapped[int | None] = mapped_column(ForeignKey("gold_items.id"), index=True, nullable=True)
    position: Mapped[int] = mapped_column(Integer)
    a_on_left: Mapped[bool] = mapped_column(Boolean)
    served_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    left_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    right_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Vote(Base):
    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(16))
    criteria: Mapped[dict] = mapped_column(JSON, default=dict)
    #: milliseconds from serving the task to this vote (server clock)
    time_on_task_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UndoneVote(Base):
    __tablename__ = "undone_votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(16))
    criteria: Mapped[dict] = mapped_column(JSON, default=dict)
    time_on_task_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    undone_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Flag(Base):
    __tablename__ = "flags"
    __table_args__ = (UniqueConstraint("task_id", "side", "reason"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    side: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_votes_annotator_created", Vote.annotator_id, Vote.id)


class SchemaError(UsageError, RuntimeError):
    """The database was made by another version of the review app (a table lacks columns)."""


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaError` when an existing table lacks a column this version needs.

    ``create_all`` adds missing tables but never columns, so a study database made by an older
    version would otherwise fail on its first request.
    """
    from sqlalchemy import inspect

    insp = inspect(engine)
    present = set(insp.get_table_names())
    for table in Base.metadata.sorted_tables:
        if table.name not in present:
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = sorted(c.name for c in table.columns if c.name not in have)
        if missing:
            raise SchemaError(
                f"the study database {engine.url.render_as_string(hide_password=True)} was made by an older version "
                f"of the review app (table {table.name} lacks {missing}); export its results with that version and "
                "create the study again"
            )


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout, foreign keys, and IMMEDIATE writes.

    Writes go through ``engine.execution_options(sqlite_immediate=True)`` (see :func:`make_sessions`):
    in WAL mode a deferred transaction that reads and then writes fails at once with "database is
    locked" when another writer committed in between; ``BEGIN IMMEDIATE`` takes the write lock
    first and waits (busy timeout) instead.
    """
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
            kwargs.setdefault("pool_size", 32)
            kwargs.setdefault("max_overflow", 16)
    engine = create_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through every test
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover
            if conn.get_execution_options().get("sqlite_immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

    return engine


def make_sessions(engine: Engine) -> tuple[sessionmaker, sessionmaker]:
    """(read sessions, write sessions); write sessions take the SQLite write lock up front."""
    reader = sessionmaker(bind=engine, expire_on_commit=False)
    writer = sessionmaker(bind=engine.execution_options(sqlite_immediate=True), expire_on_commit=False)
    return reader, writer
