"""Database layer: the tables (models, jobs, trials, artifacts, api keys, events), engines, sessions, the DB clock.

The schema is created and changed only by Alembic (`migrations/`); `upgrade()` runs it.
Both the API and the workers use this module; it knows nothing of HTTP. The compare-and-set
updates of jobs and trials are in `service.core.repository`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

ACTIVE_TRIAL_STATES = ("queued", "running")
TERMINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
#: Ids are `Integer` columns (int4 in Postgres): an id outside 1..MAX_ID names no row, and
#: sending one to Postgres is an "integer out of range" error, so callers check `is_row_id`.
MAX_ID = 2**31 - 1


def is_row_id(value: int) -> bool:
    """Whether `value` can be the id of a row (1..MAX_ID)."""
    return 1 <= value <= MAX_ID


def parse_row_id(text: str) -> int | None:
    """The id written in `text` (ASCII digits, 1..MAX_ID), or None if it cannot name a row."""
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(MAX_ID))):
        return None
    value = int(text)
    return value if is_row_id(value) else None


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Artifact(Base):
    """A file in the artifact store (uploaded weights, baseline and trial checkpoints)."""

    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)  # relative to the artifact root
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    owner_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id"), nullable=True, index=True
    )  # the API key that uploaded it (None: keys not required, or written by a worker)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModelRecord(Base):
    """A registered model: a zoo architecture, its config and its uploaded weights."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    params: Mapped[int] = mapped_column(Integer)
    weights_artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    owner_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id"), nullable=True, index=True
    )  # the API key that registered it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    """A compression job: its spec, state, baseline and why it stopped."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    owner_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id"), nullable=True, index=True
    )  # the API key that submitted it; its trials, checkpoints and events are the key's too
    idempotency_key: Mapped[str | None] = mapped_column(
        String(200), nullable=True, unique=True, index=True
    )  # the `Idempotency-Key` header of the POST that created it
    request_hash: Mapped[str | None] = mapped_column(
        String(64), nullable=True
    )  # sha256 of that request's body: the same key with another body is refused


class Trial(Base):
    """One candidate of a job: proposed, queued, run under a lease, finished with metrics."""

    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    strategy: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    steps: Mapped[list[Any]] = mapped_column(JSON)
    reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)  # e.g. finetune
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )  # when its message was last sent; the sweeper re-sends a queued trial left unclaimed
    attempts: Mapped[list[Any] | None] = mapped_column(
        JSON, nullable=True
    )  # earlier attempts: [{"attempt", "at", "worker", "outcome"}]; `error` is the last one's
    checkpoint_artifact_id: Mapped[int | None] = mapped_column(
        ForeignKey("artifacts.id"), nullable=True
    )
    fidelity: Mapped[float] = mapped_column(
        Float, default=1.0, server_default="1.0"
    )  # the fraction of the full fine-tuning its weights have had; only 1.0 is a final result
    rung: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0"
    )  # successive-halving rung: 0 a new proposal, k + 1 continued from a rung-k trial
    parent_trial_id: Mapped[int | None] = mapped_column(
        ForeignKey("trials.id"), nullable=True
    )  # the trial whose checkpoint it starts from (the one it continues, or a warm start's)
    epochs: Mapped[float | None] = mapped_column(
        Float, nullable=True
    )  # the fine-tuning epochs this trial runs (what budget.max_epochs counts)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    """An API key: only an HMAC of the token is stored; the token is shown once at creation."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)  # sees every tenant's data


class Event(Base):
    """One change of a job or one of its trials, in the order written: the id is the SSE id of
    `GET /v1/jobs/{id}/events`, so a client resumes after the last id it saw."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("trials.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """One engine per process and URL (a forked worker child gets its own, never the parent's)."""
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _make_engine(url)
            _engines[key] = engine
        return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def db_now(session: Session) -> datetime:
    """The database's clock (leases and heartbeats are written and compared on it), as UTC."""
    value = session.execute(select(func.current_timestamp())).scalar_one()
    if isinstance(value, str):  # SQLite returns 'YYYY-MM-DD HH:MM:SS' in UTC
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """Read-back datetimes from SQLite are naive UTC; make every datetime aware."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- migrations -------------------------------------------------------------------------


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` with Alembic (the only way the schema changes)."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def schema_status(url: str) -> tuple[str | None, str]:
    """(current revision of the database, head revision of the code)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(url)).get_current_head()
    with get_engine(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head or ""


class SchemaOutOfDate(RuntimeError):
    """The database is not at the code's Alembic head."""


def check_schema(url: str) -> None:
    """Raise SchemaOutOfDate with an upgrade hint unless the database is at head."""
    current, head = schema_status(url)
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing (empty database)'}, the code needs {head}: "
            "run `autocompress db upgrade` with the same AUTOCOMPRESS_DATABASE_URL"
        )


def prepare_database(url: str, *, auto_upgrade: bool) -> None:
    """At start-up: upgrade an embedded SQLite database, or check that a shared one is at head."""
    if auto_upgrade:
        upgrade(url)
    else:
        check_schema(url)
