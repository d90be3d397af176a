"""Every compare-and-set of jobs and trials, in one place.

A trial moves `queued -> running -> succeeded | failed | cancelled` (or back to `queued` with
`attempt + 1` when its lease expires); each move of a running trial is an UPDATE conditioned on
`(id, attempt, state)`, so a worker that lost its lease, or a duplicate message, changes
nothing. Leases are written and compared on the database clock. Job state transitions happen
on a job row locked with `SELECT ... FOR UPDATE` (`lock_job`).

Functions that take a `Session` work inside the caller's transaction and never commit;
`record_trial_success` owns its transaction, because the checkpoint file's fate is tied to its
commit. `retry_transient` retries a whole transaction through a transient database error (a
lost connection, a server restarting); everything else is raised at once.

The sweeper's queries are here too: expired leases, queued trials whose message was never
claimed (`unclaimed_trials`), jobs that `advance_job` would move (`jobs_to_advance`) and
files of the artifact store that no row names (`orphaned_files`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, object_session

from search import Objective
from search.metric_table import is_finite
from service.core.db import (
    ACTIVE_TRIAL_STATES,
    TERMINAL_JOB_STATES,
    Artifact,
    Event,
    Job,
    Trial,
    db_now,
)
from service.core.storage import ArtifactStore, StagedFile, publishing_session

CANCELLED_BY_USER = "cancelled by the user"

log = logging.getLogger(__name__)
T = TypeVar("T")

# --- transient database errors ------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: the connection was lost or the server is (re)starting,
    or SQLite is busy. Integrity errors, bad SQL and everything else are not."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def retry_transient(fn: Callable[[], T], *, seconds: float, what: str) -> T:
    """`fn()` (one whole transaction), again after a transient database error, with backoff
    from 0.1 s doubling up to 1 s (well inside a lease, so a result retried after the server
    is back lands before the sweeper would re-queue the trial), for at most `seconds`; then,
    or at once for any other error, the error is raised."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: transient database error, retrying in %.1f s: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- events -------------------------------------------------------------------------------

#: The event a trial's final state writes.
TRIAL_OUTCOME_EVENTS = {
    "succeeded": "trial.finished",
    "failed": "trial.failed",
    "cancelled": "trial.cancelled",
}
JOB_FINISHED = "job.finished"


def record_event(
    session: Session, job_id: int, kind: str, data: dict[str, Any], trial_id: int | None = None
) -> Event:
    """Append one event of the job, in the caller's transaction (it exists when that commits)."""
    event = Event(job_id=job_id, trial_id=trial_id, kind=kind, data={"job_id": job_id, **data})
    session.add(event)
    return event


def _trial_event(session: Session, trial_id: int, kind: str, **extra: Any) -> None:
    """An event of a trial with its state as it is now in this transaction."""
    row = session.execute(
        select(
            Trial.job_id, Trial.number, Trial.attempt, Trial.state, Trial.progress, Trial.stage,
            Trial.error,
        ).where(Trial.id == trial_id)
    ).one()  # fmt: skip
    data = {
        "trial_id": trial_id,
        "number": row.number,
        "attempt": row.attempt,
        "state": row.state,
        "progress": row.progress,
        "stage": row.stage,
        **extra,
    }
    if row.error and kind != "trial.progress":
        data["error"] = row.error
    record_event(session, row.job_id, kind, data, trial_id=trial_id)


def _job_event(job: Job, kind: str) -> None:
    data = {"state": job.state, "stop_reason": job.stop_reason, "error": job.error}
    record_event(object_session(job), job.id, kind, data)


def events_after(session: Session, job_id: int, after: int, limit: int = 500) -> list[Event]:
    """The job's events with an id above `after`, oldest first (what an SSE client missed)."""
    return list(
        session.scalars(
            select(Event)
            .where(Event.job_id == job_id, Event.id > after)
            .order_by(Event.id)
            .limit(limit)
        )
    )


# --- jobs ---------------------------------------------------------------------------------


def lock_job(session: Session, job_id: int) -> Job | None:
    """The job row, locked for this transaction (Postgres; SQLite serialises writers)."""
    return session.execute(
        select(Job).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()


def job_by_idempotency_key(session: Session, key: str) -> Job | None:
    """The job a `POST /v1/jobs` with this `Idempotency-Key` created, if any."""
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def job_trials(session: Session, job_id: int) -> list[Trial]:
    """A job's trials in proposal order."""
    return list(session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.number)))


def start_job(job: Job, baseline: dict[str, Any], now: datetime) -> None:
    """queued -> running, with the baseline every trial is measured against."""
    job.baseline, job.state, job.started_at = baseline, "running", now
    _job_event(job, "job.started")


def fail_job(job: Job, now: datetime, error: str) -> None:
    job.state, job.error, job.finished_at = "failed", error, now
    _job_event(job, JOB_FINISHED)


def cancel_job(job: Job, now: datetime) -> None:
    """A job cancelled before it had a baseline."""
    job.state, job.stop_reason, job.finished_at = "cancelled", CANCELLED_BY_USER, now
    _job_event(job, JOB_FINISHED)


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
    _job_event(job, JOB_FINISHED)


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


# --- ranking results ----------------------------------------------------------------------


def constraint_violation(metrics: Mapping[str, Any] | None, objective: Objective) -> float:
    """How far `metrics` are from meeting the constraints: the sum over bounds of the excess
    relative to the bound (0 when all hold; inf when a constrained metric is missing)."""
    total = 0.0
    for c in objective.constraints:
        value = (metrics or {}).get(c.metric)
        if not is_finite(value):
            return math.inf
        for bound, excess in ((c.min, (c.min or 0) - value), (c.max, value - (c.max or 0))):
            if bound is not None and excess > 0:
                total += excess / max(abs(bound), 1e-12)
    return total


def result_rank(metrics: Mapping[str, Any] | None, objective: Objective) -> tuple[int, float]:
    """A sort key, best first: feasible results by the objective's first metric, then the
    infeasible ones by :func:`constraint_violation` (closest first), then failures."""
    if objective.is_feasible(metrics):
        metric, goal = objective.metrics[0]
        return 0, -metrics[metric] if goal == "max" else metrics[metric]
    violation = constraint_violation(metrics, objective)
    return (1, violation) if math.isfinite(violation) else (2, 0.0)


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
    fidelity: float = 1.0,
    rung: int = 0,
    parent_trial_id: int | None = None,
    epochs: float | None = None,
) -> Trial:
    """A new `queued` trial (attempt 1), flushed so that it has its id: a new proposal
    (rung 0), or a continuation of `parent_trial_id` at `rung` / `fidelity`, or a warm start
    from `parent_trial_id`; `epochs` are the fine-tuning epochs it will run."""
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
        fidelity=fidelity,
        rung=rung,
        parent_trial_id=parent_trial_id,
        epochs=epochs,
    )
    session.add(trial)
    session.flush()
    _trial_event(session, trial.id, "trial.queued")
    return trial


def cancel_queued_trials(trials: list[Trial], now: datetime) -> None:
    """A cancelled job's queued trials are dropped (running ones stop at their next check)."""
    for t in trials:
        if t.state == "queued":
            t.state, t.finished_at = "cancelled", now
            object_session(t).flush()
            _trial_event(object_session(t), t.id, "trial.cancelled")


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
            stage=None,
        )
    ).rowcount
    if claimed != 1:
        return None
    _trial_event(session, trial_id, "trial.started")
    return session.get(Trial, trial_id)


def _running(trial_id: int, attempt: int):  # noqa: ANN202
    """The compare-and-set of a running trial: this attempt still holds it."""
    return update(Trial).where(
        Trial.id == trial_id, Trial.attempt == attempt, Trial.state == "running"
    )


def renew_lease(
    session: Session,
    trial_id: int,
    attempt: int,
    *,
    lease_seconds: float,
    progress: float,
    stage: str | None = None,
) -> bool:
    """Extend the lease from the database clock and store the progress and stage (a
    `trial.progress` event when either changed); False: lease lost."""
    until = db_now(session) + timedelta(seconds=lease_seconds)
    before = session.execute(
        select(Trial.progress, Trial.stage).where(Trial.id == trial_id)
    ).one_or_none()
    values: dict[str, Any] = {"lease_expires_at": until, "progress": progress}
    if stage is not None:
        values["stage"] = stage
    renewed = session.execute(_running(trial_id, attempt).values(**values)).rowcount
    if renewed == 1 and before is not None and (
        before.progress != progress or (stage is not None and before.stage != stage)
    ):
        _trial_event(session, trial_id, "trial.progress")
    return renewed == 1


def finish_trial(session: Session, trial_id: int, attempt: int, state: str, **values: Any) -> bool:
    """Write the outcome only if this attempt still holds the lease (compare-and-set)."""
    done = session.execute(
        _running(trial_id, attempt).values(
            state=state, finished_at=db_now(session), lease_expires_at=None, **values
        )
    ).rowcount
    if done == 1:
        metrics = values.get("metrics")
        _trial_event(session, trial_id, TRIAL_OUTCOME_EVENTS.get(state, f"trial.{state}"),
                     **({"metrics": metrics} if metrics else {}))  # fmt: skip
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
    *,
    retry_seconds: float = 0.0,
) -> bool:
    """In one transaction: the checkpoint's artifact row and the trial's result (compare-and-set
    on attempt and running). Only when the compare-and-set holds is the file renamed into place
    (just before the commit; removed again if the commit fails). False: the lease was lost,
    the transaction rolled back and the staged file deleted.

    A transient database error retries the whole transaction for up to `retry_seconds`; a
    hard link of the checkpoint kept aside puts the file back for the next try (a failed commit
    removes the published file). A commit whose answer was lost (it did commit) is recognised
    on the next try by the trial's row naming this file, which is then put back in place."""
    kept = store.stage(checkpoint.relative.split("/", 1)[0])
    _link_or_copy(checkpoint.path, kept.path)
    tries = 0

    def once() -> bool:
        nonlocal tries
        tries += 1
        if not checkpoint.path.exists():
            _link_or_copy(kept.path, checkpoint.path)
        with publishing_session(url) as (session, files):
            if tries > 1 and _committed(session, trial_id, attempt, checkpoint.relative):
                _link_or_copy(kept.path, checkpoint.final)
                return True
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
        return True

    try:
        return retry_transient(once, seconds=retry_seconds, what=f"result of trial {trial_id}")
    except _LeaseLost:
        return False
    finally:
        kept.discard()
        checkpoint.discard()


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def _committed(session: Session, trial_id: int, attempt: int, relative: str) -> bool:
    """Whether this attempt's result naming the file `relative` is already committed."""
    row = session.execute(
        select(Trial.state, Trial.attempt, Artifact.path)
        .join(Artifact, Artifact.id == Trial.checkpoint_artifact_id)
        .where(Trial.id == trial_id)
    ).one_or_none()
    return row is not None and (row.state, row.attempt, row.path) == ("succeeded", attempt, relative)


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
        select(
            Trial.id, Trial.job_id, Trial.attempt, Trial.worker, Trial.started_at, Trial.attempts
        )
        .where(Trial.state == "running", Trial.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    for trial_id, job_id, attempt, worker, started_at, attempts in expired:
        note = f"attempt {attempt}: lease expired (worker {worker} lost)"
        cas = _running(trial_id, attempt).where(Trial.lease_expires_at < now)
        if attempt < max_attempts:
            earlier = [*(attempts or []), attempt_record(attempt, worker, started_at, now, note)]
            requeue = cas.values(
                state="queued",
                attempt=attempt + 1,
                worker=None,
                lease_expires_at=None,
                error=None,  # `error` is the last attempt's; this one's is in `attempts`
                attempts=earlier,
                sent_at=now,
                progress=0.0,
            )
            if session.execute(requeue).rowcount == 1:
                result.requeued.append((trial_id, attempt + 1))
                _trial_event(session, trial_id, "trial.queued")
        else:
            give_up = cas.values(
                state="failed",
                finished_at=now,
                lease_expires_at=None,
                error=f"{note}; gave up after {attempt} attempts",
            )
            if session.execute(give_up).rowcount == 1:
                _trial_event(session, trial_id, "trial.failed")
                result.failed_jobs.add(job_id)
                result.failed += 1
    return result


def attempt_record(
    attempt: int, worker: str | None, started_at: datetime | None, ended_at: datetime, outcome: str
) -> dict[str, Any]:
    """One entry of a trial's `attempts`: which attempt, on which pool process, when, and how
    it ended."""
    return {
        "attempt": attempt,
        "worker": worker,
        "started_at": started_at.isoformat() if started_at else None,
        "ended_at": ended_at.isoformat(),
        "outcome": outcome,
    }


def mark_sent(session: Session, trial_ids: list[int]) -> None:
    """Note that the trials' messages are being sent now (the sweeper's clock for re-sends)."""
    if trial_ids:
        session.execute(
            update(Trial).where(Trial.id.in_(trial_ids)).values(sent_at=db_now(session))
        )


def unclaimed_trials(session: Session, grace_seconds: float) -> list[tuple[int, int]]:
    """(id, attempt) of queued trials whose message went out more than `grace_seconds` ago and
    that no worker claimed (the message was lost with the broker, or never sent); they are
    marked as sent now, to be sent again after this transaction commits."""
    cutoff = db_now(session) - timedelta(seconds=grace_seconds)
    rows = session.execute(
        select(Trial.id, Trial.attempt)
        .where(Trial.state == "queued", or_(Trial.sent_at.is_(None), Trial.sent_at < cutoff))
        .order_by(Trial.id)
        .with_for_update(skip_locked=True)
    ).all()
    mark_sent(session, [trial_id for trial_id, _ in rows])
    return [(trial_id, attempt) for trial_id, attempt in rows]


def inflight_limit(job: Job, max_inflight_per_job: int) -> int:
    """How many of the job's trials may be queued or running at once."""
    return min(job.spec["budget"]["max_parallel"], max_inflight_per_job)


def jobs_to_advance(session: Session, max_inflight_per_job: int) -> list[int]:
    """Unfinished jobs that `advance_job` would move: nothing in flight (a queued job without
    its baseline, or a follow-up message lost), or running with a free slot and budget left."""
    counts = (
        select(
            Trial.job_id,
            func.count().label("total"),
            func.count().filter(Trial.state.in_(ACTIVE_TRIAL_STATES)).label("active"),
        )
        .group_by(Trial.job_id)
        .subquery()
    )
    rows = session.execute(
        select(Job, counts.c.total, counts.c.active)
        .outerjoin(counts, counts.c.job_id == Job.id)
        .where(Job.state.not_in(TERMINAL_JOB_STATES))
        .order_by(Job.id)
    ).all()
    due = []
    for job, total, active in rows:
        total, active = total or 0, active or 0
        free = min(
            inflight_limit(job, max_inflight_per_job) - active,
            job.spec["budget"]["max_trials"] - total,
        )
        if active == 0 or (job.state == "running" and free > 0):
            due.append(job.id)
    return due


_STORED_NAME = re.compile(r"^[0-9a-f]{32}\.[A-Za-z0-9]+(\.part)?$")


def orphaned_files(session: Session, store: ArtifactStore, grace_seconds: float) -> list[Path]:
    """Files the artifact store wrote (`<kind>/<uuid>.<ext>`, or a `.part` being written) that
    no artifacts row names and that are older than `grace_seconds`: left by a worker or a
    server that died between writing a file and committing its row."""
    cutoff = time.time() - grace_seconds
    known = set(session.scalars(select(Artifact.path)))
    orphans = []
    for kind_dir in store.root.iterdir():
        if not kind_dir.is_dir():
            continue
        for path in kind_dir.iterdir():
            relative = f"{kind_dir.name}/{path.name}"
            if not _STORED_NAME.match(path.name) or relative in known:
                continue
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    orphans.append(path)
            except FileNotFoundError:  # published or discarded meanwhile
                continue
    return orphans


def queued_trials(session: Session) -> list[tuple[int, int]]:
    """(id, attempt) of every queued trial, to re-send at start-up."""
    return [
        tuple(row)
        for row in session.execute(select(Trial.id, Trial.attempt).where(Trial.state == "queued"))
    ]


def unfinished_jobs(session: Session) -> list[int]:
    """Jobs not finished (queued, running), by id."""
    query = select(Job.id).where(Job.state.not_in(TERMINAL_JOB_STATES))
    return list(session.scalars(query.order_by(Job.id)))
