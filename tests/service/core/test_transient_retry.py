"""repository.retry_transient and record_trial_success on a real Postgres database whose
backend connection is terminated (pg_terminate_backend) in the middle of the result's
transaction: the write is retried, not lost, and leaves one row and one file."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from service.core import repository
from service.core.db import Artifact, Trial, get_engine, session_scope, upgrade
from service.core.settings import Settings
from service.core.storage import ArtifactStore
from tests.service.core.test_repository import placeholder_trial


@pytest.fixture
def pg_trial(pg_url: str, tmp_path: Path) -> tuple[Settings, int]:
    """(settings, id of a claimed trial, attempt 1) in a fresh, migrated Postgres database."""
    settings = Settings(home=tmp_path, database_url=pg_url)
    settings.ensure_dirs()
    upgrade(pg_url)
    trial_id = placeholder_trial(pg_url)
    with session_scope(pg_url) as session:
        assert repository.claim_trial(session, trial_id, 1, lease_seconds=60, worker="w")
    yield settings, trial_id
    get_engine(pg_url).dispose()  # before the fixture drops the database


def _kill_backend_at_first(url: str, sql_start: str) -> list[int]:
    """Terminate the session's own backend the first time a statement starting with
    `sql_start` is about to run on it (a real connection loss, mid-transaction)."""
    killed: list[int] = []
    admin = url.replace("postgresql+psycopg://", "postgresql://")

    @event.listens_for(get_engine(url), "before_cursor_execute")
    def kill(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        if not killed and statement.lstrip().upper().startswith(sql_start):
            pid = conn.connection.dbapi_connection.info.backend_pid
            with psycopg.connect(admin, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)

    return killed


def test_a_result_write_whose_connection_is_killed_is_retried(pg_trial) -> None:  # noqa: ANN001
    settings, trial_id = pg_trial
    store = ArtifactStore(settings.artifact_root)
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"packed checkpoint")
    killed = _kill_backend_at_first(settings.database_url, "UPDATE TRIALS")
    assert repository.record_trial_success(
        settings.database_url, store, staged, trial_id, 1, {"accuracy": 0.9}, retry_seconds=10
    )
    assert killed, "the backend was terminated during the write"
    with session_scope(settings.database_url) as session:
        done = session.get(Trial, trial_id)
        checkpoints = session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.kind == "checkpoint")
        )
        artifact = session.get(Artifact, done.checkpoint_artifact_id)
    assert (done.state, done.attempt, done.metrics) == ("succeeded", 1, {"accuracy": 0.9})
    assert checkpoints == 1  # the first try's artifact row was rolled back with its connection
    assert store.resolve(artifact.path).read_bytes() == b"packed checkpoint"
    leftovers = [p.name for p in (Path(settings.artifact_root) / "checkpoints").iterdir()]
    assert leftovers == [Path(artifact.path).name]  # no staged or kept-aside file remains


def test_without_retry_time_a_killed_connection_is_raised(pg_trial) -> None:  # noqa: ANN001
    settings, trial_id = pg_trial
    store = ArtifactStore(settings.artifact_root)
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"x")
    _kill_backend_at_first(settings.database_url, "UPDATE TRIALS")
    with pytest.raises(OperationalError) as raised:
        repository.record_trial_success(
            settings.database_url, store, staged, trial_id, 1, {}, retry_seconds=0
        )
    assert repository.is_transient(raised.value)
    with session_scope(settings.database_url) as session:
        assert session.get(Trial, trial_id).state == "running"  # left for a retry or the sweeper


def test_a_heartbeat_survives_a_killed_connection(pg_trial) -> None:  # noqa: ANN001
    from workers.jobs import Heartbeat

    settings, trial_id = pg_trial
    with session_scope(settings.database_url) as session:
        job_id = session.get(Trial, trial_id).job_id
    killed = _kill_backend_at_first(settings.database_url, "UPDATE TRIALS")
    beat = Heartbeat(settings, trial_id, 1, job_id)
    beat.progress = 0.5
    beat.beat()
    assert killed and not beat.lost.is_set()
    with session_scope(settings.database_url) as session:
        assert session.get(Trial, trial_id).progress == 0.5


def test_only_transient_errors_are_retried() -> None:
    calls: list[int] = []

    def integrity() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        repository.retry_transient(integrity, seconds=5, what="test")
    assert len(calls) == 1

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "done"

    assert repository.retry_transient(flaky, seconds=5, what="test") == "done"
    assert len(calls) == 4
