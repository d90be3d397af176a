"""advance_job, evaluate_trial and the sweeper on a real (SQLite) database, run directly."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service.db import Job, ModelRecord, Trial, db_now, session_scope, upgrade
from service.settings import Settings
from service.storage import ArtifactStore
from workers import jobs


class RecordingDispatcher:
    """Collects what would be enqueued, so the test decides what runs and when."""

    def __init__(self) -> None:
        self.advanced: list[int] = []
        self.evaluations: list[tuple[int, int]] = []

    def advance_job(self, job_id: int) -> None:
        self.advanced.append(job_id)

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        self.evaluations.append((trial_id, attempt))


@pytest.fixture
def setup(tmp_path: Path, digits_model: Path):  # noqa: ANN201
    settings = Settings(home=tmp_path, lease_seconds=60, max_attempts=2)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    store = ArtifactStore(settings.artifact_root)
    with store.writing("weights") as (tmp, relative):
        tmp.write_bytes(digits_model.read_bytes())
    spec = {
        "dataset": "builtin:digits",
        "objective": {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.05}]},
        "search_space": {"strategies": [{"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.2, "max": 0.8}}]}]},
        "finetune": {"method": "masked", "epochs": 1, "lr": 1e-3, "batch_size": 64},
        "budget": {"max_trials": 3, "max_parallel": 2},
    }
    with session_scope(settings.database_url) as session:
        artifact = store.register(session, "weights", relative)
        model = ModelRecord(
            name="m", architecture="mlp", params=0, weights_artifact_id=artifact.id,
            config={"in_features": 64, "hidden": [64], "num_classes": 10},
        )
        session.add(model)
        session.flush()
        job = Job(model_id=model.id, spec=spec, seed=3)
        session.add(job)
        session.flush()
        job_id = job.id
    return settings, job_id


def trials_of(settings: Settings, job_id: int) -> list[Trial]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.number)))


def test_advance_fills_free_slots_and_is_idempotent(setup) -> None:  # noqa: ANN001
    settings, job_id = setup
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    jobs.advance_job(settings, d, job_id)  # a duplicate message changes nothing
    trials = trials_of(settings, job_id)
    assert len(trials) == 2 and all(t.state == "queued" for t in trials)
    assert sorted(d.evaluations) == sorted((t.id, 1) for t in trials)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.state == "running" and job.baseline["accuracy"] > 0.8


def test_trial_runs_once_then_job_finishes(setup) -> None:  # noqa: ANN001
    settings, job_id = setup
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    first = d.evaluations[0]
    jobs.evaluate_trial(settings, d, *first)
    jobs.evaluate_trial(settings, d, *first)  # redelivered message: claimed already, no-op
    done = [t for t in trials_of(settings, job_id) if t.id == first[0]][0]
    assert done.state == "succeeded" and done.metrics["size_bytes"] > 0
    assert done.checkpoint_artifact_id is not None
    for trial_id, attempt in list(d.evaluations):
        jobs.evaluate_trial(settings, d, trial_id, attempt)
    for trial_id, attempt in list(d.evaluations):
        jobs.evaluate_trial(settings, d, trial_id, attempt)
    trials = trials_of(settings, job_id)
    assert [t.state for t in trials] == ["succeeded"] * 3
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.state == "succeeded" and "trial budget" in job.stop_reason


def _expire(settings: Settings, trial_id: int) -> None:
    with session_scope(settings.database_url) as session:
        past = db_now(session) - timedelta(seconds=5)
        session.execute(
            update(Trial).where(Trial.id == trial_id).values(state="running", lease_expires_at=past)
        )


def test_sweeper_requeues_expired_leases_then_gives_up(setup) -> None:  # noqa: ANN001
    settings, job_id = setup
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    trial_id, _ = d.evaluations[0]
    _expire(settings, trial_id)
    assert jobs.sweep(settings, d)["requeued"] == 1
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert (trial.state, trial.attempt) == ("queued", 2)
    assert (trial_id, 2) in d.evaluations
    jobs.evaluate_trial(settings, d, trial_id, 1)  # the dead worker's stale message: no-op
    assert [t for t in trials_of(settings, job_id) if t.id == trial_id][0].state == "queued"
    _expire(settings, trial_id)
    assert jobs.sweep(settings, d)["failed"] == 1  # max_attempts = 2
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert trial.state == "failed" and "gave up after 2 attempts" in trial.error


def test_cancel_stops_queued_trials_and_finishes_job(setup) -> None:  # noqa: ANN001
    settings, job_id = setup
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).cancel_requested = True
    jobs.advance_job(settings, d, job_id)
    assert [t.state for t in trials_of(settings, job_id)] == ["cancelled", "cancelled"]
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).state == "cancelled"


def test_patience_stops_a_job_that_no_longer_improves(setup) -> None:  # noqa: ANN001
    settings, job_id = setup
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.spec = {**job.spec, "budget": {"max_trials": 10, "max_parallel": 1, "patience": 2}}
        job.baseline, job.state = {"accuracy": 0.9, "size_bytes": 1000}, "running"
        for number, ratio in enumerate([3.0, 2.0, 2.5]):  # best at trial 0, then two worse
            session.add(
                Trial(
                    job_id=job_id, number=number, state="succeeded", strategy="p",
                    params={"0.sparsity": 0.2 + 0.1 * number}, steps=[], attempt=1, progress=1.0,
                    metrics={"compression_ratio": ratio, "accuracy_drop": 0.0},
                )
            )
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    assert d.evaluations == []
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.state == "succeeded" and "no improvement" in job.stop_reason
