"""workers.sweeper: expired leases are re-queued up to max_attempts; start-up re-sends work."""

from __future__ import annotations

from tests.conftest import RecordingDispatcher, expire_lease, trials_of
from workers import jobs, sweeper


def test_sweeper_requeues_expired_leases_then_gives_up(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    trial_id, _ = d.evaluations[0]
    expire_lease(settings, trial_id)
    assert sweeper.sweep(settings, d)["requeued"] == 1
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert (trial.state, trial.attempt, trial.error) == ("queued", 2, None)
    [first] = trial.attempts  # the earlier attempt and how it ended
    assert first["attempt"] == 1 and "lease expired" in first["outcome"]
    assert (trial_id, 2) in d.evaluations
    jobs.evaluate_trial(settings, d, trial_id, 1)  # the dead worker's stale message: no-op
    assert [t for t in trials_of(settings, job_id) if t.id == trial_id][0].state == "queued"
    expire_lease(settings, trial_id)
    d.advanced.clear()
    assert sweeper.sweep(settings, d)["failed"] == 1  # max_attempts = 2
    trial = [t for t in trials_of(settings, job_id) if t.id == trial_id][0]
    assert trial.state == "failed" and "gave up after 2 attempts" in trial.error
    assert [a["attempt"] for a in trial.attempts] == [1]  # the last attempt's failure is `error`
    assert job_id in d.advanced  # its job is told, to propose a replacement or finish


def test_startup_sweep_resends_queued_trials_and_advances_unfinished_jobs(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    queued = sorted(d.evaluations)
    later = RecordingDispatcher()
    assert sweeper.sweep(settings, later) == {
        "requeued": 0, "failed": 0, "resent": 0, "orphans_removed": 0
    }  # fmt: skip
    assert later.evaluations == [] and later.advanced == []  # trials in flight: nothing to do
    restarted = RecordingDispatcher()
    sweeper.sweep(settings, restarted, startup=True)
    assert sorted(restarted.evaluations) == queued and restarted.advanced == [job_id]
