"""service.core.repository: every compare-and-set of trials and jobs, on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.core import repository
from service.core.db import Artifact, Job, ModelRecord, Trial, session_scope, upgrade
from service.core.settings import Settings
from service.core.storage import ArtifactStore
from tests.conftest import expire_lease


@pytest.fixture
def db(tmp_path: Path) -> tuple[Settings, int]:
    """(settings, id of a queued trial of a running job) with placeholder model rows."""
    settings = Settings(home=tmp_path)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return settings, placeholder_trial(settings.database_url)


def placeholder_trial(url: str) -> int:
    """A queued trial of a running job, with placeholder model rows, in a migrated database."""
    with session_scope(url) as session:
        weights = Artifact(
            kind="weights", path="weights/w.safetensors", size_bytes=1, sha256="0" * 64
        )
        session.add(weights)
        session.flush()
        model = ModelRecord(
            name="m", architecture="mlp", config={}, params=1, weights_artifact_id=weights.id
        )
        session.add(model)
        session.flush()
        job = Job(model_id=model.id, spec={}, state="running")
        session.add(job)
        session.flush()
        trial = repository.add_trial(
            session, job.id, 0, strategy="p", params={}, steps=[], reason=None
        )
        return trial.id


def claim(settings: Settings, trial_id: int, attempt: int = 1) -> Trial | None:
    with session_scope(settings.database_url) as session:
        return repository.claim_trial(session, trial_id, attempt, lease_seconds=60, worker="w")


def trial(settings: Settings, trial_id: int) -> Trial:
    with session_scope(settings.database_url) as session:
        return session.get(Trial, trial_id)


def test_a_trial_is_claimed_once_and_only_by_its_attempt(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    assert claim(settings, trial_id, attempt=2) is None  # a message for another attempt
    claimed = claim(settings, trial_id)
    assert claimed is not None and claimed.state == "running" and claimed.worker == "w"
    assert claimed.lease_expires_at is not None
    assert claim(settings, trial_id) is None  # a duplicate message


def test_lease_renewal_and_result_need_the_current_attempt(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    claim(settings, trial_id)
    with session_scope(settings.database_url) as session:
        assert repository.renew_lease(session, trial_id, 1, lease_seconds=60, progress=0.5)
    expire_lease(settings, trial_id)
    with session_scope(settings.database_url) as session:
        assert repository.sweep_expired_leases(session, max_attempts=3).requeued == [(trial_id, 2)]
    with session_scope(settings.database_url) as session:  # the old worker wakes up
        assert not repository.renew_lease(session, trial_id, 1, lease_seconds=60, progress=0.9)
        assert not repository.finish_trial(session, trial_id, 1, "succeeded", metrics={})
    assert (trial(settings, trial_id).state, trial(settings, trial_id).progress) == ("queued", 0.0)
    claim(settings, trial_id, attempt=2)
    with session_scope(settings.database_url) as session:
        assert repository.finish_trial(session, trial_id, 2, "failed", error="boom")
    done = trial(settings, trial_id)
    assert (done.state, done.error, done.lease_expires_at) == ("failed", "boom", None)


def test_sweep_gives_up_after_max_attempts_and_names_the_job(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    claim(settings, trial_id)
    expire_lease(settings, trial_id)
    with session_scope(settings.database_url) as session:
        swept = repository.sweep_expired_leases(session, max_attempts=1)
    job_id = trial(settings, trial_id).job_id
    assert (swept.requeued, swept.failed_jobs, swept.failed) == ([], {job_id}, 1)
    assert "gave up after 1 attempts" in trial(settings, trial_id).error


def test_cancel_is_requested_only_of_an_unfinished_job(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    job_id = trial(settings, trial_id).job_id
    with session_scope(settings.database_url) as session:
        assert repository.request_cancel(session, job_id)
        assert repository.cancel_requested(session, job_id)
        assert repository.unfinished_jobs(session) == [job_id]
        job = repository.lock_job(session, job_id)
        trials = repository.job_trials(session, job_id)
        repository.cancel_queued_trials(trials, job.created_at)
        repository.finish_job(job, trials, job.created_at, repository.CANCELLED_BY_USER)
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).state == "cancelled"
        assert not repository.request_cancel(session, job_id)
        assert repository.unfinished_jobs(session) == []


def _staged_checkpoint(settings: Settings):  # noqa: ANN202
    store = ArtifactStore(settings.artifact_root)
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"packed checkpoint")
    return store, staged


def _artifact_count(settings: Settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.kind == "checkpoint")
        )


def test_success_writes_row_result_and_file_together(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    claim(settings, trial_id)
    store, staged = _staged_checkpoint(settings)
    metrics = {"accuracy": 0.9, "device": "cpu"}
    assert repository.record_trial_success(
        settings.database_url, store, staged, trial_id, 1, metrics
    )
    done = trial(settings, trial_id)
    assert (done.state, done.metrics, done.device, done.progress) == (
        "succeeded",
        metrics,
        "cpu",
        1.0,
    )
    with session_scope(settings.database_url) as session:
        artifact = session.get(Artifact, done.checkpoint_artifact_id)
    assert artifact.path == staged.relative and artifact.size_bytes == len(b"packed checkpoint")
    assert staged.final.read_bytes() == b"packed checkpoint" and not staged.path.exists()


def test_a_lost_lease_writes_neither_row_nor_file(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    claim(settings, trial_id)
    expire_lease(settings, trial_id)
    with session_scope(settings.database_url) as session:
        repository.sweep_expired_leases(session, max_attempts=3)
    store, staged = _staged_checkpoint(settings)
    assert not repository.record_trial_success(
        settings.database_url, store, staged, trial_id, 1, {"accuracy": 0.9}
    )
    assert _artifact_count(settings) == 0
    assert not staged.path.exists() and not staged.final.exists()
    assert trial(settings, trial_id).checkpoint_artifact_id is None


def _sent_ago(settings: Settings, trial_id: int, seconds: float) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from service.core.db import db_now

    with session_scope(settings.database_url) as session:
        sent = db_now(session) - timedelta(seconds=seconds)
        session.execute(update(Trial).where(Trial.id == trial_id).values(sent_at=sent))


def test_unclaimed_trials_are_those_sent_longer_ago_than_the_grace(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    _sent_ago(settings, trial_id, 5)
    with session_scope(settings.database_url) as session:
        assert repository.unclaimed_trials(session, grace_seconds=30) == []
        assert repository.unclaimed_trials(session, grace_seconds=2) == [(trial_id, 1)]
        assert repository.unclaimed_trials(session, grace_seconds=2) == []  # marked as sent now
    _sent_ago(settings, trial_id, 5)
    claim(settings, trial_id)
    with session_scope(settings.database_url) as session:
        assert repository.unclaimed_trials(session, grace_seconds=2) == []  # claimed: running


def test_jobs_to_advance_have_a_free_slot_or_nothing_in_flight(db) -> None:  # noqa: ANN001
    settings, trial_id = db
    budget = {"max_trials": 3, "max_parallel": 4}
    with session_scope(settings.database_url) as session:
        job = session.get(Job, trial(settings, trial_id).job_id)
        job.spec = {"budget": budget}
        idle = Job(model_id=job.model_id, spec={"budget": budget}, state="queued")
        session.add(idle)
        session.flush()
        job_id, idle_id = job.id, idle.id
    with session_scope(settings.database_url) as session:
        # one trial queued of a cap of 1 in flight: full; the other job has nothing in flight
        assert repository.jobs_to_advance(session, max_inflight_per_job=1) == [idle_id]
        assert repository.jobs_to_advance(session, max_inflight_per_job=2) == [job_id, idle_id]


def test_orphaned_files_are_old_store_files_without_a_row(db) -> None:  # noqa: ANN001
    import os
    import time

    settings, _ = db
    store = ArtifactStore(settings.artifact_root)
    with store.writing("checkpoints") as (tmp, relative):
        tmp.write_bytes(b"kept")
    with session_scope(settings.database_url) as session:
        store.register(session, "checkpoint", relative)
    orphan = store.stage("checkpoints")  # a worker died between writing and committing
    orphan.path.write_bytes(b"orphan")
    young = store.stage("checkpoints")
    young.path.write_bytes(b"being written")
    foreign = Path(settings.artifact_root) / "checkpoints" / "README.txt"  # not the store's
    foreign.write_text("x")
    for path in (orphan.path, foreign):
        os.utime(path, (time.time() - 100, time.time() - 100))
    with session_scope(settings.database_url) as session:
        assert repository.orphaned_files(session, store, grace_seconds=50) == [orphan.path]
