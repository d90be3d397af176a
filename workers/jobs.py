"""advance_job, evaluate_trial and the sweeper: how a job moves, written once for both modes.

- `advance_job(job_id)` reads the job's trials (finished ones as data, queued and running ones
  as pending points), asks the optimiser for as many candidates as there are free slots,
  writes them as `queued` trials and enqueues them; it also computes the job's baseline on
  its first run and finishes the job when its budget is spent. It keeps no state of its own.
- `evaluate_trial(trial_id, attempt)` claims the trial (compare-and-set `queued` to
  `running` with a lease on the database clock), renews the lease from a heartbeat thread that
  also watches the job's cancel flag, computes, and writes the result only if it still holds
  the lease.
- `sweep()` re-queues trials whose lease expired (a worker died), up to `max_attempts`, and
  nudges jobs that have nothing in flight.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from search import Candidate, Objective, Observation, SearchSettings, SearchSpace, propose
from search.stopping import stop_reason
from service.datasets import resolve_reference
from service.db import (
    ACTIVE_TRIAL_STATES,
    TERMINAL_JOB_STATES,
    Artifact,
    Job,
    ModelRecord,
    Trial,
    as_utc,
    db_now,
    session_scope,
)
from service.settings import Settings
from service.storage import ArtifactStore
from workers.dispatch import Dispatcher

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"

# Embedded mode runs advance_job on several threads of one process; SQLite has no row locks.
_job_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)


def _model_source(session: Session, store: ArtifactStore, model_id: int):  # noqa: ANN202
    from workers.trial import ModelSource

    record = session.get(ModelRecord, model_id)
    weights = session.get(Artifact, record.weights_artifact_id)
    return ModelSource(record.architecture, dict(record.config), store.resolve(weights.path))


def _finish_job(job: Job, now: datetime, trials: list[Trial], stop_reason: str) -> None:
    succeeded = [t for t in trials if t.state == "succeeded"]
    if job.cancel_requested:
        job.state = "cancelled"
    elif succeeded:
        job.state = "succeeded"
    else:
        job.state = "failed"
        errors = [t.error for t in trials if t.error]
        job.error = "no trial succeeded" + (f"; first error: {errors[0]}" if errors else "")
    job.stop_reason = stop_reason
    job.finished_at = now


def _stop_reason(
    job: Job, trials: list[Trial], observations: list[Observation], now: datetime
) -> str | None:
    """Why the job must propose nothing more (cancel, trials, time, patience), or None."""
    if job.cancel_requested:
        return "cancelled by the user"
    budget = job.spec["budget"]
    started = as_utc(job.started_at)
    return stop_reason(
        observations,
        Objective.from_spec(job.spec["objective"]),
        max_trials=budget["max_trials"],
        n_trials=len(trials),
        elapsed_s=(now - started).total_seconds() if started else None,
        max_minutes=budget.get("max_minutes"),
        patience=budget.get("patience"),
        min_improvement=budget.get("min_improvement", 0.0),
    )


def _history(trials: list[Trial]) -> tuple[list[Observation], list[Candidate]]:
    observations, pending = [], []
    for t in trials:
        candidate = Candidate(strategy=t.strategy, params=dict(t.params))
        if t.state == "succeeded":
            observations.append(Observation(candidate=candidate, metrics=t.metrics))
        elif t.state == "failed":
            observations.append(Observation(candidate=candidate, metrics=None))
        elif t.state in ACTIVE_TRIAL_STATES:
            pending.append(candidate)
    return observations, pending


def advance_job(settings: Settings, dispatcher: Dispatcher, job_id: int) -> None:
    """Compute the baseline if needed, fill free slots with proposals, or finish the job."""
    with _job_locks[job_id]:
        to_run: list[tuple[int, int]] = []
        with session_scope(settings.database_url) as session:
            job = session.execute(
                select(Job).where(Job.id == job_id).with_for_update()
            ).scalar_one_or_none()
            if job is None or job.state in TERMINAL_JOB_STATES:
                return
            if job.baseline is None and not _ensure_baseline(settings, session, job):
                return
            trials = list(
                session.scalars(select(Trial).where(Trial.job_id == job_id).order_by(Trial.number))
            )
            now = db_now(session)
            if job.cancel_requested:
                for t in trials:
                    if t.state == "queued":
                        t.state, t.finished_at = "cancelled", now
            active = [t for t in trials if t.state in ACTIVE_TRIAL_STATES]
            observations, pending = _history(trials)
            reason = _stop_reason(job, trials, observations, now)
            if reason is not None:
                if not active:
                    _finish_job(job, now, trials, reason)
                return
            budget = job.spec["budget"]
            free = min(budget["max_parallel"] - len(active), budget["max_trials"] - len(trials))
            if free <= 0:
                return
            space = SearchSpace.from_spec(job.spec["search_space"])
            objective = Objective.from_spec(job.spec["objective"])
            try:
                search_settings = SearchSettings.from_spec(job.spec.get("search"))
                proposals = propose(
                    space, objective, observations, pending, free, seed=job.seed, settings=search_settings
                )
            except Exception as exc:  # the optimiser is meant never to raise; if it does, say so
                log.exception("optimiser failed for job %s", job_id)
                job.state, job.error, job.finished_at = "failed", f"optimiser failed: {exc}", now
                return
            for i, proposal in enumerate(proposals):
                trial = Trial(
                    job_id=job_id,
                    number=len(trials) + i,
                    state="queued",
                    strategy=proposal.candidate.strategy,
                    params=proposal.candidate.params,
                    steps=space.materialize(proposal.candidate),
                    reason=proposal.reason,
                    attempt=1,
                    progress=0.0,
                )
                session.add(trial)
                session.flush()
                to_run.append((trial.id, trial.attempt))
        for trial_id, attempt in to_run:  # after the commit: messages are hints
            dispatcher.evaluate_trial(trial_id, attempt)


def _ensure_baseline(settings: Settings, session: Session, job: Job) -> bool:
    """Measure the uncompressed model once per job; a job whose baseline fails is failed."""
    from workers.trial import compute_baseline

    store = ArtifactStore(settings.artifact_root)
    now = db_now(session)
    if job.cancel_requested:
        job.state, job.stop_reason, job.finished_at = "cancelled", "cancelled by the user", now
        return False
    try:
        source = _model_source(session, store, job.model_id)
        dataset_ref, data_roots = resolve_reference(job.spec["dataset"], settings, session)
        with store.writing("baselines") as (tmp, relative):
            baseline = compute_baseline(
                source,
                dataset_ref,
                data_roots,
                tmp,
                latency_batch_size=job.spec.get("latency_batch_size", settings.latency_batch_size),
            )
        artifact = store.register(session, "baseline", relative)
        baseline["checkpoint_artifact_id"] = artifact.id
    except Exception as exc:
        log.exception("baseline of job %s failed", job.id)
        job.state, job.finished_at = "failed", now
        job.error = f"baseline failed: {type(exc).__name__}: {exc}"
        return False
    job.baseline = baseline
    job.state = "running"
    job.started_at = now
    return True


class Heartbeat(threading.Thread):
    """Renews a running trial's lease on the database clock and watches the cancel flag."""

    def __init__(self, settings: Settings, trial_id: int, attempt: int, job_id: int) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{trial_id}")
        self.settings, self.trial_id, self.attempt, self.job_id = settings, trial_id, attempt, job_id
        self.progress = 0.0
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stopped = threading.Event()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set()

    def run(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception:  # a database hiccup: the lease has slack, try again next beat
                log.warning("heartbeat of trial %s failed", self.trial_id, exc_info=True)

    def beat(self) -> None:
        with session_scope(self.settings.database_url) as session:
            until = db_now(session) + timedelta(seconds=self.settings.lease_seconds)
            renewed = session.execute(
                update(Trial)
                .where(
                    Trial.id == self.trial_id,
                    Trial.attempt == self.attempt,
                    Trial.state == "running",
                )
                .values(lease_expires_at=until, progress=self.progress)
            ).rowcount
            if renewed != 1:
                self.lost.set()
            if session.get(Job, self.job_id).cancel_requested:
                self.cancelled.set()

    def stop(self) -> None:
        self._stopped.set()


def _claim(settings: Settings, trial_id: int, attempt: int) -> dict[str, Any] | None:
    """queued -> running under a fresh lease; None if someone else has it or it is done."""
    with session_scope(settings.database_url) as session:
        now = db_now(session)
        claimed = session.execute(
            update(Trial)
            .where(Trial.id == trial_id, Trial.state == "queued", Trial.attempt == attempt)
            .values(
                state="running",
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                worker=WORKER_NAME,
                started_at=now,
                progress=0.0,
            )
        ).rowcount
        if claimed != 1:
            return None
        trial = session.get(Trial, trial_id)
        job = session.get(Job, trial.job_id)
        store = ArtifactStore(settings.artifact_root)
        try:
            dataset_ref, data_roots = resolve_reference(job.spec["dataset"], settings, session)
        except ValueError:  # e.g. an uploaded dataset deleted since: the trial fails, saying why
            dataset_ref, data_roots = job.spec["dataset"], []
        return {
            "job_id": job.id,
            "dataset_ref": dataset_ref,
            "data_roots": data_roots,
            "cancel_requested": job.cancel_requested,
            "source": _model_source(session, store, job.model_id),
            "spec": job.spec,
            "seed": job.seed * 1000 + trial.number,
            "baseline": job.baseline,
            "steps": trial.steps,
            "number": trial.number,
        }


def _finish_trial(
    settings: Settings, trial_id: int, attempt: int, state: str, **values: Any
) -> bool:
    """Write the outcome only if this attempt still holds the lease (compare-and-set)."""
    with session_scope(settings.database_url) as session:
        done = session.execute(
            update(Trial)
            .where(Trial.id == trial_id, Trial.attempt == attempt, Trial.state == "running")
            .values(state=state, finished_at=db_now(session), lease_expires_at=None, **values)
        ).rowcount
        return done == 1


def evaluate_trial(settings: Settings, dispatcher: Dispatcher, trial_id: int, attempt: int) -> None:
    """Claim, compute and record one trial, then advance its job."""
    from operators.training import Cancelled
    from workers.device import describe, worker_device
    from workers.trial import run_trial

    claim = _claim(settings, trial_id, attempt)
    if claim is None:
        return
    job_id = claim["job_id"]
    if claim["cancel_requested"]:
        _finish_trial(settings, trial_id, attempt, "cancelled", error="job cancelled")
        advance_job(settings, dispatcher, job_id)
        return
    device = worker_device()
    store = ArtifactStore(settings.artifact_root)
    heartbeat = Heartbeat(settings, trial_id, attempt, job_id)
    heartbeat.start()

    def on_progress(fraction: float) -> None:
        heartbeat.progress = float(fraction)

    spec = claim["spec"]
    try:
        with store.writing("checkpoints") as (tmp, relative):
            metrics = run_trial(
                source=claim["source"],
                dataset_ref=claim["dataset_ref"],
                data_roots=claim["data_roots"],
                steps=claim["steps"],
                finetune_spec=spec["finetune"],
                seed=claim["seed"],
                baseline=claim["baseline"],
                checkpoint_path=tmp,
                device=device,
                latency_batch_size=spec.get("latency_batch_size", settings.latency_batch_size),
                should_stop=heartbeat.should_stop,
                on_progress=on_progress,
                metadata={"job": job_id, "trial": trial_id, "steps": claim["steps"]},
            )
        metrics["device"] = describe(device)
        with session_scope(settings.database_url) as session:
            artifact = store.register(session, "checkpoint", relative)
            artifact_id = artifact.id
        if not _finish_trial(
            settings,
            trial_id,
            attempt,
            "succeeded",
            metrics=metrics,
            checkpoint_artifact_id=artifact_id,
            progress=1.0,
            device=metrics["device"],
        ):
            log.warning("trial %s attempt %s lost its lease; result discarded", trial_id, attempt)
    except Cancelled:
        if not heartbeat.lost.is_set():
            _finish_trial(settings, trial_id, attempt, "cancelled", error="job cancelled")
    except Exception as exc:
        log.exception("trial %s failed", trial_id)
        _finish_trial(
            settings, trial_id, attempt, "failed", error=f"{type(exc).__name__}: {exc}"[:2000]
        )
    finally:
        heartbeat.stop()
    advance_job(settings, dispatcher, job_id)


def sweep(settings: Settings, dispatcher: Dispatcher, *, startup: bool = False) -> dict[str, int]:
    """Re-queue trials whose lease expired; at start-up also re-send queued trials and jobs."""
    requeue: list[tuple[int, int]] = []
    advance: set[int] = set()
    counts = {"requeued": 0, "failed": 0}
    with session_scope(settings.database_url) as session:
        now = db_now(session)
        expired = session.scalars(
            select(Trial)
            .where(Trial.state == "running", Trial.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        )
        for t in expired:
            note = f"attempt {t.attempt}: lease expired (worker {t.worker} lost)"
            if t.attempt < settings.max_attempts:
                t.state, t.attempt, t.worker, t.lease_expires_at = "queued", t.attempt + 1, None, None
                t.error, t.progress = note, 0.0
                requeue.append((t.id, t.attempt))
                counts["requeued"] += 1
            else:
                t.state, t.finished_at, t.lease_expires_at = "failed", now, None
                t.error = f"{note}; gave up after {t.attempt} attempts"
                advance.add(t.job_id)
                counts["failed"] += 1
        if startup:
            for t in session.scalars(select(Trial).where(Trial.state == "queued")):
                requeue.append((t.id, t.attempt))
        for job in session.scalars(select(Job).where(Job.state.in_(("queued", "running")))):
            has_active = session.scalar(
                select(Trial.id).where(Trial.job_id == job.id, Trial.state.in_(ACTIVE_TRIAL_STATES))
            )
            if startup or has_active is None:
                advance.add(job.id)
    for trial_id, attempt in requeue:
        dispatcher.evaluate_trial(trial_id, attempt)
    for job_id in sorted(advance):
        dispatcher.advance_job(job_id)
    return counts


class Sweeper(threading.Thread):
    """Runs `sweep` once at start-up and then every `sweep_seconds`, in a daemon thread."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        super().__init__(daemon=True, name="sweeper")
        self.settings, self.dispatcher = settings, dispatcher
        self._stopped = threading.Event()

    def run(self) -> None:
        startup = True
        while True:
            try:
                counts = sweep(self.settings, self.dispatcher, startup=startup)
                if counts["requeued"] or counts["failed"]:
                    log.warning("sweeper: %s", counts)
                startup = False
            except Exception:
                log.warning("sweep failed", exc_info=True)
            if self._stopped.wait(self.settings.sweep_seconds):
                return

    def stop(self) -> None:
        self._stopped.set()
