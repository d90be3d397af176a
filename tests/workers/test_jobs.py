"""workers.jobs: advance_job and evaluate_trial on a real (SQLite) database, run directly."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from operators import read_manifest
from service.core import repository
from service.core.db import Artifact, Job, Trial, session_scope
from service.core.dispatch import DispatchUnavailable
from service.core.settings import Settings
from tests.conftest import RecordingDispatcher, expire_lease, trials_of
from workers import jobs, sweeper


def test_advance_fills_free_slots_and_is_idempotent(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    jobs.advance_job(settings, d, job_id)  # a duplicate message changes nothing
    trials = trials_of(settings, job_id)
    assert len(trials) == 2 and all(t.state == "queued" for t in trials)
    assert sorted(d.evaluations) == sorted((t.id, 1) for t in trials)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.state == "running" and job.baseline["accuracy"] > 0.8
        baseline = session.get(Artifact, job.baseline["checkpoint_artifact_id"])
        assert baseline.kind == "baseline"
    assert (Path(settings.artifact_root) / baseline.path).stat().st_size == baseline.size_bytes


def test_trial_runs_once_then_job_finishes(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    first = d.evaluations[0]
    jobs.evaluate_trial(settings, d, *first)
    jobs.evaluate_trial(settings, d, *first)  # redelivered message: claimed already, no-op
    done = [t for t in trials_of(settings, job_id) if t.id == first[0]][0]
    assert done.state == "succeeded" and done.metrics["size_bytes"] > 0
    assert done.checkpoint_artifact_id is not None
    with session_scope(settings.database_url) as session:
        artifact = session.get(Artifact, done.checkpoint_artifact_id)
        baseline = session.get(Job, job_id).baseline
    path = Path(settings.artifact_root) / artifact.path
    assert path.stat().st_size == artifact.size_bytes == done.metrics["size_bytes"]
    recorded = read_manifest(path)["metadata"]["baseline"]  # for `autocompress evaluate`
    assert recorded == {"accuracy": baseline["accuracy"], "size_bytes": baseline["size_bytes"]}
    for trial_id, attempt in list(d.evaluations):
        jobs.evaluate_trial(settings, d, trial_id, attempt)
    for trial_id, attempt in list(d.evaluations):
        jobs.evaluate_trial(settings, d, trial_id, attempt)
    trials = trials_of(settings, job_id)
    assert [t.state for t in trials] == ["succeeded"] * 3
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job.state == "succeeded" and "trial budget" in job.stop_reason


def _checkpoint_files(settings: Settings) -> list[Path]:
    return [p for p in (Path(settings.artifact_root) / "checkpoints").glob("*") if p.is_file()]


def test_a_lost_lease_leaves_no_artifact_row_and_no_file(digits_job, monkeypatch) -> None:  # noqa: ANN001
    """The worker computes, but meanwhile its lease expired and the sweeper re-queued the trial:
    its result, its checkpoint's artifact row and its file are all discarded."""
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    trial_id, attempt = d.evaluations[0]
    real_run_trial = jobs.run_trial

    def run_then_lose_the_lease(**kwargs):  # noqa: ANN003, ANN202
        metrics = real_run_trial(**kwargs)
        assert kwargs["checkpoint_path"].exists()  # written under its temporary name
        expire_lease(settings, trial_id)  # the lease runs out ...
        assert sweeper.sweep(settings, d)["requeued"] == 1  # ... and the sweeper re-queues it
        return metrics

    monkeypatch.setattr(jobs, "run_trial", run_then_lose_the_lease)
    jobs.evaluate_trial(settings, d, trial_id, attempt)
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert (trial.state, trial.attempt, trial.metrics) == ("queued", attempt + 1, None)
    assert trial.checkpoint_artifact_id is None
    with session_scope(settings.database_url) as session:
        kinds = list(session.scalars(select(Artifact.kind)))
    assert "checkpoint" not in kinds
    assert _checkpoint_files(settings) == []


def test_a_failed_trial_leaves_no_file(digits_job, monkeypatch) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    trial_id, attempt = d.evaluations[0]

    def write_then_fail(**kwargs):  # noqa: ANN003, ANN202
        kwargs["checkpoint_path"].write_bytes(b"half a checkpoint")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(jobs, "run_trial", write_then_fail)
    jobs.evaluate_trial(settings, d, trial_id, attempt)
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert trial.state == "failed" and "out of memory" in trial.error
    assert _checkpoint_files(settings) == []


def test_cancel_stops_queued_trials_and_finishes_job(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    with session_scope(settings.database_url) as session:
        session.get(Job, job_id).cancel_requested = True
    jobs.advance_job(settings, d, job_id)
    assert [t.state for t in trials_of(settings, job_id)] == ["cancelled", "cancelled"]
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).state == "cancelled"


def test_patience_stops_a_job_that_no_longer_improves(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
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


def test_advance_keeps_at_most_the_per_job_cap_in_flight(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job  # max_parallel 2
    settings.max_inflight_per_job = 1
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    jobs.advance_job(settings, d, job_id)
    trials = trials_of(settings, job_id)
    assert [t.state for t in trials] == ["queued"] and d.evaluations == [(trials[0].id, 1)]
    assert trials[0].sent_at is not None  # the sweeper re-sends it if nobody claims it
    with session_scope(settings.database_url) as session:
        assert repository.jobs_to_advance(session, 1) == []  # full: nothing for the sweeper


class _BrokerDown:
    """A dispatcher whose broker is unreachable."""

    def advance_job(self, job_id: int) -> None:
        raise DispatchUnavailable("broker down")

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        raise DispatchUnavailable("broker down")


def test_a_message_the_broker_refuses_is_left_to_the_sweeper(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    settings.requeue_grace_seconds = 0
    jobs.advance_job(settings, _BrokerDown(), job_id)  # commits its trials, does not raise
    queued = sorted((t.id, 1) for t in trials_of(settings, job_id))
    assert len(queued) == 2
    later = RecordingDispatcher()
    import time

    time.sleep(1.1)  # SQLite's clock has whole seconds
    assert sweeper.sweep(settings, later)["resent"] == 2
    assert sorted(later.evaluations) == queued
