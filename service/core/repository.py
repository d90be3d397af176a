"""Every compare-and-set of jobs and trials, in one place.

A trial moves `queued -> running -> succeeded | failed | cancelled` (or back to `queued` with
`attempt + 1` when its lease expires); each move of a running trial is an UPDATE conditioned on
`(id, attempt, state)`, so a worker that lost its lease, or a duplicate message, changes
nothing. Leases are written and compared on the database clock. Job state transitions happen
on a job row locked with `SELECT ... FOR UPDATE` (`lock_job`).

Functions that take a `Session` work inside the caller's transaction and never commit;
`record_trial_success` owns its transaction, because the checkpoint file's fate is tied to its
commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.core.db import (
    ACTIVE_TRIAL_STATES,
    TERMINAL_JOB_STATES,
    Job,
    Trial,
    db_now,
)
from service.core.storage import ArtifactStore, StagedFile, publishing_session

CANCELLED_BY_USER = "cancelled by the user"

# --- jobs ---------------------------------------------------------------------------------


def lock_job(session: Session, job_id: int) -> Job | None:
    """The job row, locked for this transaction (Postgres; SQLite serialises writers)."""
    return session.execute(
        select(Job).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()


def job_trials(session: Session, job_id: int) -> list[Trial]:
    """A job's trials in proposal order."""
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.number)))


def start_job(job: Job, baseline: dict[str, Any], now: datetime) -> None:
    """queued -> running, with the baseline every trial is measured against."""
    job.baseline, job.state, job.started_at = baseline, "running", now


def fail_job(job: Job, now: datetime, error: str) -> None:
    job.state, job.error, job.finished_at = "failed", error, now


def cancel_job(job: Job, now: datetime) -> None:
    """A job cancelled before it had a baseline."""
    job.state, job.stop_reason, job.finished_at = "cancelled", CANCELLED_BY_USER, now


def finish_job(job: Job, trials: list[Trial], now: datetime, stop_reason: str) -> None:
    """The job's final state once nothing is in flight: cancelled, succeeded or failed."""
    if job.cancel_requested:
        job.state = "cancelled"
    elif any(t.state == "succeeded" for t in trials):
        job.state = "succeeded"
    else:
        job.state = "failed"
        errors = [t.error for t in trials if t.error]
        job.error = "no trial succeeded" + (f"; first error: {errors[0]}" if errors else "")
    job.stop_reason = stop_reason
    job.finished_at = now


def request_cancel(session: Session, job_id: int) -> bool:
    """Set the job's cancel flag unless it is finished; True when the flag was set now."""
    return (
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(TERMINAL_JOB_STATES))
            .values(cancel_requested=True)
        ).rowcount
        == 1
    )


def cancel_requested(session: Session, job_id: int) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


# --- trials -------------------------------------------------------------------------------


def add_trial(
    session: Session,
    job_id: int,
    number: int,
    *,
    strategy: str,
    params: dict[str, Any],
    steps: list[Any],
    reason: dict[str, Any] | None,
) -> Trial:
    """A new `queued` trial (attempt 1), flushed so that it has its id."""
    trial = Trial(
        job_id=job_id,
        number=number,
        state="queued",
        strategy=strategy,
        params=params,
        steps=steps,
        reason=reason,
        attempt=1,
        progress=0.0,
    )
    session.add(trial)
    session.flush()
    return trial


def cancel_queued_trials(trials: list[Trial], now: datetime) -> None:
    """A cancelled job's queued trials are dropped (running ones stop at their next check)."""
    for t in trials:
        if t.state == "queued":
            t.state, t.finished_at = "cancelled", now


def claim_trial(
    session: Session, trial_id: int, attempt: int, *, lease_seconds: float, worker: str
) -> Trial | None:
    """queued -> running under a fresh lease; None if someone else has it or it is done."""
    now = db_now(session)
    claimed = session.execute(
        update(Trial)
        .where(Trial.id == trial_id, Trial.state == "queued", Trial.attempt == attempt)
        .values(
            state="running",
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            worker=worker,
            started_at=now,
            progress=0.0,
        )
    ).rowcount
    return session.get(Trial, trial_id) if claimed == 1 else None


def _running(trial_id: int, attempt: int):  # noqa: ANN202
    """The compare-and-set of a running trial: this attempt still holds it."""
    return update(Trial).where(
        Trial.id == trial_id, Trial.attempt == attempt, Trial.state == "running"
    )


def renew_lease(
    session: Session, trial_id: int, attempt: int, *, lease_seconds: float, progress: float
) -> bool:
    """Extend the lease from the database clock and store the progress; False: lease lost."""
    until = db_now(session) + timedelta(seconds=lease_seconds)
    renewed = session.execute(
        _running(trial_id, attempt).values(lease_expires_at=until, progress=progress)
    ).rowcount
    return renewed == 1


def finish_trial(session: Session, trial_id: int, attempt: int, state: str, **values: Any) -> bool:
    """Write the outcome only if this attempt still holds the lease (compare-and-set)."""
    done = session.execute(
        _running(trial_id, attempt).values(
            state=state, finished_at=db_now(session), lease_expires_at=None, **values
        )
    ).rowcount
    return done == 1


class _LeaseLost(Exception):
    pass


def record_trial_success(
    url: str,
    store: ArtifactStore,
    checkpoint: StagedFile,
    trial_id: int,
    attempt: int,
    metrics: dict[str, Any],
) -> bool:
    """In one transaction: the checkpoint's artifact row and the trial's result (compare-and-set
    on attempt and running). Only when the compare-and-set holds is the file renamed into place
    (just before the commit; removed again if the commit fails). False: the lease was lost,
    the transaction rolled back and the staged file deleted."""
    try:
        with publishing_session(url) as (session, files):
            artifact = store.register(
                session, "checkpoint", checkpoint.relative, written_at=checkpoint.path
            )
            if not finish_trial(
                session,
                trial_id,
                attempt,
                "succeeded",
                metrics=metrics,
                checkpoint_artifact_id=artifact.id,
                progress=1.0,
                device=metrics.get("device"),
            ):
                raise _LeaseLost
            files.append(checkpoint)
    except _LeaseLost:
        checkpoint.discard()
        return False
    return True


# --- the sweeper --------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep changed: trials to re-send and jobs to advance."""

    requeued: list[tuple[int, int]] = field(default_factory=list)  # (trial id, new attempt)
    failed_jobs: set[int] = field(default_factory=set)  # jobs of trials failed for good
    failed: int = 0


def sweep_expired_leases(session: Session, max_attempts: int) -> SweepResult:
    """Running trials whose lease expired go back to `queued` with `attempt + 1`, up to
    `max_attempts`, then `failed` with the reason; each move is a compare-and-set, so a worker
    that writes its result at the same moment wins or loses cleanly."""
    result = SweepResult()
    now = db_now(session)
    expired = session.execute(
        select(Trial.id, Trial.job_id, Trial.attempt, Trial.worker)
        .where(Trial.state == "running", Trial.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    for trial_id, job_id, attempt, worker in expired:
        note = f"attempt {attempt}: lease expired (worker {worker} lost)"
        cas = _running(trial_id, attempt).where(Trial.lease_expires_at < now)
        if attempt < max_attempts:
            requeue = cas.values(
                state="queued",
                attempt=attempt + 1,
                worker=None,
                lease_expires_at=None,
                error=note,
                progress=0.0,
            )
            if session.execute(requeue).rowcount == 1:
                result.requeued.append((trial_id, attempt + 1))
        else:
            give_up = cas.values(
                state="failed",
                finished_at=now,
                lease_expires_at=None,
                error=f"{note}; gave up after {attempt} attempts",
            )
            if session.execute(give_up).rowcount == 1:
                result.failed_jobs.add(job_id)
                result.failed += 1
    return result


def queued_trials(session: Session) -> list[tuple[int, int]]:
    """(id, attempt) of every queued trial, to re-send at start-up."""
    return [
        tuple(row)
        for row in session.execute(select(Trial.id, Trial.attempt).where(Trial.state == "queued"))
    ]


def unfinished_jobs(session: Session, *, idle_only: bool) -> list[int]:
    """Jobs not finished; with `idle_only`, only those with no queued or running trial."""
    query = select(Job.id).where(Job.state.not_in(TERMINAL_JOB_STATES))
    if idle_only:
        active = select(Trial.id).where(
            Trial.job_id == Job.id, Trial.state.in_(ACTIVE_TRIAL_STATES)
        )
        query = query.where(~active.exists())
    return list(session.scalars(query.order_by(Job.id)))
