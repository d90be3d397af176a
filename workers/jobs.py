"""advance_job and evaluate_trial: how a job moves, written once for both modes.

- `advance_job(job_id)` reads the job's trials (finished ones as data, queued and running ones
  as pending points), asks the optimiser for as many candidates as there are free slots (at
  most `max_inflight_per_job` of the job's trials queued or running at once, so one large job
  cannot fill the shared queue ahead of the others), writes them as `queued` trials and
  enqueues them; it also computes the job's baseline on its first run and finishes the job
  when its budget is spent. It keeps no state of its own.
- `evaluate_trial(trial_id, attempt)` claims the trial (compare-and-set `queued` to
  `running` with a lease on the database clock), renews the lease from a heartbeat thread that
  also watches the job's cancel flag, computes, and writes the result only if it still holds
  the lease: the checkpoint's artifact row and the result in one transaction, the file put in
  place only when that transaction holds. The result write and the heartbeat retry transient
  database errors (`repository.retry_transient`); only the trial's own exception fails it.

Messages are sent after the commit and are hints: a message that cannot be sent is logged by
the dispatcher and left to the sweeper. Every compare-and-set is in `service.core.repository`; this module decides what to do.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from operators import Cancelled
from search import Candidate, Objective, Observation, SearchSettings, SearchSpace, propose
from search.stopping import stop_reason
from service.core import repository
from service.core.datasets import resolve_reference
from service.core.db import (
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
from service.core.dispatch import Dispatcher, send_after_commit
from service.core.settings import Settings
from service.core.storage import ArtifactStore, StagedFile, publishing_session
from workers.device import describe, worker_device
from workers.trial import ModelSource, compute_baseline, run_trial

log = logging.getLogger(__name__)



def worker_name() -> str:
    """hostname:pid of this process, the pool process that runs the trial (read at each call:
    a Celery pool child forks after import)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# Embedded mode runs advance_job on several threads of one process; SQLite has no row locks.
_job_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)


def _model_source(session: Session, store: ArtifactStore, model_id: int) -> ModelSource:
    record = session.get(ModelRecord, model_id)
    weights = session.get(Artifact, record.weights_artifact_id)
    return ModelSource(record.architecture, dict(record.config), store.resolve(weights.path))


def _stop_reason(
    job: Job, trials: list[Trial], observations: list[Observation], now: datetime
) -> str | None:
    """Why the job must propose nothing more (cancel, trials, time, patience), or None."""
    if job.cancel_requested:
        return repository.CANCELLED_BY_USER
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
        with publishing_session(settings.database_url) as (session, files):
            job = repository.lock_job(session, job_id)
            if job is None or job.state in TERMINAL_JOB_STATES:
                return
            if job.baseline is None and not _ensure_baseline(settings, session, files, job):
                return
            trials = repository.job_trials(session, job_id)
            now = db_now(session)
            if job.cancel_requested:
                repository.cancel_queued_trials(trials, now)
            active = [t for t in trials if t.state in ACTIVE_TRIAL_STATES]
            observations, pending = _history(trials)
            reason = _stop_reason(job, trials, observations, now)
            if reason is not None:
                if not active:
                    repository.finish_job(job, trials, now, reason)
                return
            free = min(
                repository.inflight_limit(job, settings.max_inflight_per_job) - len(active),
                job.spec["budget"]["max_trials"] - len(trials),
            )
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
                log.exception("optimiser failed for job %s", job_id, extra={"job_id": job_id})
                repository.fail_job(job, now, f"optimiser failed: {exc}")
                return
            for i, proposal in enumerate(proposals):
                trial = repository.add_trial(
                    session,
                    job_id,
                    len(trials) + i,
                    strategy=proposal.candidate.strategy,
                    params=proposal.candidate.params,
                    steps=space.materialize(proposal.candidate),
                    reason=proposal.reason,
                )
                to_run.append((trial.id, trial.attempt))
            repository.mark_sent(session, [trial_id for trial_id, _ in to_run])
        for trial_id, attempt in to_run:  # after the commit: messages are hints
            send_after_commit(dispatcher.evaluate_trial, trial_id, attempt)


def _ensure_baseline(
    settings: Settings, session: Session, files: list[StagedFile], job: Job
) -> bool:
    """Measure the uncompressed model once per job; a job whose baseline fails is failed.
    The baseline checkpoint goes in place with the transaction that records it (`files`)."""
    store = ArtifactStore(settings.artifact_root)
    now = db_now(session)
    if job.cancel_requested:
        repository.cancel_job(job, now)
        return False
    staged = store.stage("baselines")
    try:
        source = _model_source(session, store, job.model_id)
        dataset_ref, data_roots = resolve_reference(job.spec["dataset"], settings, session)
        baseline = compute_baseline(
            source,
            dataset_ref,
            data_roots,
            staged.path,
            latency_batch_size=job.spec.get("latency_batch_size", settings.latency_batch_size),
        )
        artifact = store.register(session, "baseline", staged.relative, written_at=staged.path)
        baseline["checkpoint_artifact_id"] = artifact.id
    except Exception as exc:
        staged.discard()
        log.exception("baseline of job %s failed", job.id, extra={"job_id": job.id})
        repository.fail_job(job, now, f"baseline failed: {type(exc).__name__}: {exc}")
        return False
    files.append(staged)
    repository.start_job(job, baseline, now)
    return True


class Heartbeat(threading.Thread):
    """Renews a running trial's lease on the database clock and watches the cancel flag."""

    def __init__(self, settings: Settings, trial_id: int, attempt: int, job_id: int) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{trial_id}")
        self.settings, self.trial_id, self.attempt, self.job_id = settings, trial_id, attempt, job_id
        self.progress = 0.0
        self.stage: str | None = None  # what the trial is doing (run_trial's on_stage)
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
                log.warning(
                    "heartbeat of trial %s failed",
                    self.trial_id,
                    exc_info=True,
                    extra={"job_id": self.job_id, "trial_id": self.trial_id},
                )

    def beat(self) -> None:
        """One renewal, retried through a transient database error for one heartbeat period."""
        repository.retry_transient(
            self._beat_once,
            seconds=min(self.settings.heartbeat_seconds, self.settings.db_retry_seconds),
            what=f"heartbeat of trial {self.trial_id}",
        )

    def _beat_once(self) -> None:
        with session_scope(self.settings.database_url) as session:
            if not repository.renew_lease(
                session,
                self.trial_id,
                self.attempt,
                lease_seconds=self.settings.lease_seconds,
                progress=self.progress,
                stage=self.stage,
            ):
                self.lost.set()
            if repository.cancel_requested(session, self.job_id):
                self.cancelled.set()

    def stop(self) -> None:
        self._stopped.set()


def _claim(settings: Settings, trial_id: int, attempt: int) -> dict[str, Any] | None:
    """Claim the trial and read what computing it needs; None if it is not ours to run."""
    with session_scope(settings.database_url) as session:
        trial = repository.claim_trial(
            session, trial_id, attempt, lease_seconds=settings.lease_seconds, worker=worker_name()
        )
        if trial is None:
            return None
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
    """Write a failed or cancelled outcome, retrying transient database errors."""

    def once() -> bool:
        with session_scope(settings.database_url) as session:
            return repository.finish_trial(session, trial_id, attempt, state, **values)

    return repository.retry_transient(
        once, seconds=settings.db_retry_seconds, what=f"outcome of trial {trial_id}"
    )


def evaluate_trial(settings: Settings, dispatcher: Dispatcher, trial_id: int, attempt: int) -> None:
    """Claim, compute and record one trial, then advance its job."""
    claim = _claim(settings, trial_id, attempt)
    if claim is None:
        return
    job_id = claim["job_id"]
    if claim["cancel_requested"]:
        _finish_trial(settings, trial_id, attempt, "cancelled", error="job cancelled")
        advance_job(settings, dispatcher, job_id)
        return
    ids = {"job_id": job_id, "trial_id": trial_id, "attempt": attempt}
    device = worker_device()
    log.info("trial %s attempt %s started", trial_id, attempt, extra=ids)
    store = ArtifactStore(settings.artifact_root)
    checkpoint = store.stage("checkpoints")
    heartbeat = Heartbeat(settings, trial_id, attempt, job_id)
    heartbeat.start()

    def on_progress(fraction: float) -> None:
        heartbeat.progress = float(fraction)

    def on_stage(name: str) -> None:
        heartbeat.stage = name

    spec = claim["spec"]
    try:  # the heartbeat stops and the staged file goes, whatever happens
        try:
            metrics = run_trial(
                source=claim["source"],
                dataset_ref=claim["dataset_ref"],
                data_roots=claim["data_roots"],
                steps=claim["steps"],
                finetune_spec=spec["finetune"],
                seed=claim["seed"],
                baseline=claim["baseline"],
                checkpoint_path=checkpoint.path,
                device=device,
                latency_batch_size=spec.get("latency_batch_size", settings.latency_batch_size),
                should_stop=heartbeat.should_stop,
                on_progress=on_progress,
                on_stage=on_stage,
                metadata={
                    "job": job_id,
                    "trial": trial_id,
                    "steps": claim["steps"],
                    # what `autocompress evaluate` compares a downloaded checkpoint with
                    "baseline": {k: claim["baseline"][k] for k in ("accuracy", "size_bytes")},
                },
            )
            metrics["device"] = describe(device)
        except Cancelled:
            metrics = None
            if not heartbeat.lost.is_set():
                _finish_trial(settings, trial_id, attempt, "cancelled", error="job cancelled")
        except Exception as exc:  # the trial's own failure (the database is not touched above)
            metrics = None
            log.exception("trial %s failed", trial_id, extra=ids)
            _finish_trial(
                settings, trial_id, attempt, "failed", error=f"{type(exc).__name__}: {exc}"[:2000]
            )
        if metrics is not None:
            _record_success(settings, store, checkpoint, trial_id, attempt, metrics, ids)
    finally:
        heartbeat.stop()
        checkpoint.discard()  # whatever was not put in place
    advance_job(settings, dispatcher, job_id)


def _record_success(
    settings: Settings,
    store: ArtifactStore,
    checkpoint: StagedFile,
    trial_id: int,
    attempt: int,
    metrics: dict[str, Any],
    ids: dict[str, int],
) -> None:
    """Write the result, retrying transient database errors; a database still down after
    `db_retry_seconds` leaves the trial running, and its lease expiry re-queues it."""
    if not repository.record_trial_success(
        settings.database_url,
        store,
        checkpoint,
        trial_id,
        attempt,
        metrics,
        retry_seconds=settings.db_retry_seconds,
    ):
        log.warning(
            "trial %s attempt %s lost its lease; result discarded", trial_id, attempt, extra=ids
        )
    else:
        log.info("trial %s succeeded", trial_id, extra=ids)
