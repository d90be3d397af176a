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
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from operators import Cancelled
from search import (
    Candidate,
    Objective,
    Observation,
    SearchSettings,
    SearchSpace,
    promotion_scores,
    propose,
)
from search.stopping import stop_reason
from service.core import repository
from service.core.budget import Rungs, epochs_spent
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
from workers.trial import ModelSource, compute_baseline, extends, run_trial, strategy_epochs

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


def _budget_spent(job: Job, trials: list[Trial], now: datetime) -> str | None:
    """Why nothing more may start, not even a continued rung: cancel, time, epochs; or None."""
    if job.cancel_requested:
        return repository.CANCELLED_BY_USER
    budget = job.spec["budget"]
    started = as_utc(job.started_at)
    minutes = budget.get("max_minutes")
    if minutes and started is not None and (now - started).total_seconds() >= 60.0 * minutes:
        return f"time budget spent ({minutes:g} minutes)"
    max_epochs = budget.get("max_epochs")
    if max_epochs and epochs_spent(trials) >= max_epochs:
        return f"epoch budget spent ({max_epochs:g} epochs)"
    return None


def _search_settings(job: Job) -> SearchSettings:
    """The job's ``search`` settings, with the validation split's size from its baseline (the
    accuracy's binomial noise: no proposal within it, stop when no gain above it is left)."""
    settings = SearchSettings.from_spec(job.spec.get("search"))
    samples = (job.baseline or {}).get("validation_samples")
    return replace(settings, validation_samples=samples) if samples else settings


def _stop_reason(job: Job, trials: list[Trial], observations: list[Observation]) -> str | None:
    """Why the job must propose no new candidate (trials, patience, converged below the
    noise), or None."""
    budget = job.spec["budget"]
    return stop_reason(
        observations,
        Objective.from_spec(job.spec["objective"]),
        max_trials=budget["max_trials"],
        n_trials=sum(not t.rung for t in trials),  # continued rungs are not new trials
        patience=budget.get("patience"),
        min_improvement=budget.get("min_improvement", 0.0),
        space=SearchSpace.from_spec(job.spec["search_space"]),
        settings=_search_settings(job),
        seed=job.seed,
    )


def _history(trials: list[Trial]) -> tuple[list[Observation], list[Candidate]]:
    observations, pending = [], []
    for t in trials:
        candidate = Candidate(strategy=t.strategy, params=dict(t.params))
        fidelity = 1.0 if t.fidelity is None else t.fidelity
        if t.state == "succeeded":
            observations.append(Observation(candidate, t.metrics, fidelity=fidelity))
        elif t.state == "failed":
            observations.append(Observation(candidate, None, fidelity=fidelity))
        elif t.state in ACTIVE_TRIAL_STATES:
            pending.append(candidate)
    return observations, pending


# --- multi-fidelity rungs and warm starts -----------------------------------------------------


def _full_epochs(job: Job, steps: list[dict[str, Any]]) -> float:
    return strategy_epochs(steps, job.spec["finetune"])


def _promotions(
    trials: list[Trial],
    objective: Objective,
    rungs: Rungs,
    *,
    drain: bool,
    scores: Callable[[list[Trial]], list[float] | None] | None = None,
) -> list[Trial]:
    """The trials to continue at their next rung, the most advanced rung first: at each rung
    below the top, the best ``floor(finished / eta)`` of its finished trials not yet continued.
    ``drain`` (the job would otherwise finish without a full-fidelity result): the best
    trial of the highest rung reached is continued even if its rung is not full.

    "Best" is by ``scores`` (the optimiser's predicted worth at full fidelity,
    :func:`search.promotion_scores`, asked once for every waiting trial of every rung, and
    only when some rung has a trial to continue) where it gives one, else by the observed
    results (:func:`repository.result_rank`: feasible first, which a short fine-tune makes
    pessimistic about every strong compression)."""
    continued = {t.parent_trial_id for t in trials if t.rung}
    rows = []  # per rung, most advanced first: (ranked waiting trials, open places, last chance)
    for rung in range(rungs.top - 1, -1, -1):
        finished = [t for t in trials if t.rung == rung and t.state in ("succeeded", "failed")]
        ranked = sorted(
            (t for t in finished if t.state == "succeeded"),
            key=lambda t: repository.result_rank(t.metrics, objective),
        )
        waiting = [t for t in ranked if t.id not in continued]
        n_open = len(finished) // rungs.eta - (len(ranked) - len(waiting))
        last_chance = drain and all(t.rung <= rung for t in trials)  # the highest rung reached
        rows.append((waiting, n_open, last_chance))
    candidates = [t for waiting, _, _ in rows for t in waiting]
    if scores is not None and len(candidates) > 1 and any(
        waiting and (n_open > 0 or last_chance) for waiting, n_open, last_chance in rows
    ):
        predicted = scores(candidates)
        if predicted is not None:
            worth = {t.id: p for t, p in zip(candidates, predicted, strict=True)}
            for waiting, _, _ in rows:
                waiting.sort(key=lambda t: -worth[t.id])
    out: list[Trial] = []
    for waiting, n_open, last_chance in rows:
        out += waiting[: max(0, n_open)]
        if last_chance and not out and waiting:
            out = waiting[:1]
    return out


def _promotion_scores(
    job: Job, observations: list[Observation], waiting: list[Trial]
) -> list[float] | None:
    """:func:`search.promotion_scores` of the ``waiting`` trials, from the job's history."""
    return promotion_scores(
        SearchSpace.from_spec(job.spec["search_space"]),
        Objective.from_spec(job.spec["objective"]),
        observations,
        [Candidate(strategy=t.strategy, params=dict(t.params)) for t in waiting],
        seed=job.seed,
        settings=_search_settings(job),
    )


def _warm_parent(
    job: Job, trials: list[Trial], objective: Objective, steps: list[dict[str, Any]]
) -> Trial | None:
    """With ``warm_start`` on, the best finished full-fidelity trial whose steps ``steps``
    extend (:func:`workers.trial.extends`); None without one, or when kd needs the
    registered model as the student's start."""
    if not job.spec.get("warm_start") or _uses_kd(job, steps):
        return None
    parents = [
        t for t in trials
        if t.state == "succeeded" and (t.fidelity or 1.0) >= 1.0 and t.checkpoint_artifact_id
        and extends(steps, t.steps)
    ]  # fmt: skip
    return min(parents, key=lambda t: repository.result_rank(t.metrics, objective), default=None)


def _uses_kd(job: Job, steps: list[dict[str, Any]]) -> bool:
    methods = [job.spec["finetune"].get("method")]
    methods += [(s.get("finetune") or {}).get("method") for s in steps if isinstance(s, dict)]
    return "kd" in methods


def _add_continuation(
    session: Session, job: Job, number: int, parent: Trial, rungs: Rungs, rank: int
) -> Trial:
    """The rung-higher trial of ``parent``: the same candidate, continued from its checkpoint
    for the epochs the next rung adds."""
    rung = parent.rung + 1
    added = rungs.fractions[rung] - rungs.fractions[parent.rung]
    return repository.add_trial(
        session, job.id, number, strategy=parent.strategy, params=parent.params,
        steps=parent.steps, fidelity=rungs.fractions[rung], rung=rung,
        parent_trial_id=parent.id, epochs=round(added * _full_epochs(job, parent.steps), 6),
        reason={"method": "promotion", "rung": rung, "from_trial": parent.number, "rank": rank},
    )  # fmt: skip


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
            spent = _budget_spent(job, trials, now)
            if spent is not None:
                if not active:
                    repository.finish_job(job, trials, now, spent)
                return
            observations, pending = _history(trials)
            reason = _stop_reason(job, trials, observations)
            objective = Objective.from_spec(job.spec["objective"])
            rungs = Rungs.of(job)
            slots = repository.inflight_limit(job, settings.max_inflight_per_job) - len(active)
            drain = reason is not None and not active and not any(
                t.state == "succeeded" and t.rung == rungs.top for t in trials
            )
            promoted = _promotions(
                trials, objective, rungs, drain=drain,
                scores=lambda waiting: _promotion_scores(job, observations, waiting),
            )[: max(0, slots)]  # fmt: skip
            for rank, parent in enumerate(promoted, start=1):
                trial = _add_continuation(session, job, len(trials) + len(to_run), parent, rungs, rank)
                to_run.append((trial.id, trial.attempt))
            free = 0 if reason is not None else min(
                slots - len(promoted),
                job.spec["budget"]["max_trials"] - sum(not t.rung for t in trials),
            )
            if reason is not None and not active and not promoted:
                repository.finish_job(job, trials, now, reason)
                return
            if free > 0 and not _propose(session, job, trials, free, rungs, (observations, pending), to_run, now):
                return
            repository.mark_sent(session, [trial_id for trial_id, _ in to_run])
        for trial_id, attempt in to_run:  # after the commit: messages are hints
            send_after_commit(dispatcher.evaluate_trial, trial_id, attempt)


def _propose(
    session: Session,
    job: Job,
    trials: list[Trial],
    free: int,
    rungs: Rungs,
    history: tuple[list[Observation], list[Candidate]],
    to_run: list[tuple[int, int]],
    now: datetime,
) -> bool:
    """Ask the optimiser for ``free`` candidates and add them as rung-0 trials (warm-started
    when a finished trial is their parent); False when the optimiser failed the job."""
    space = SearchSpace.from_spec(job.spec["search_space"])
    objective = Objective.from_spec(job.spec["objective"])
    try:
        proposals = propose(
            space, objective, *history, free, seed=job.seed, settings=_search_settings(job)
        )
    except Exception as exc:  # the optimiser is meant never to raise; if it does, say so
        log.exception("optimiser failed for job %s", job.id, extra={"job_id": job.id})
        repository.fail_job(job, now, f"optimiser failed: {exc}")
        return False
    fraction = rungs.fractions[0]
    for proposal in proposals:
        steps = space.materialize(proposal.candidate)
        parent = _warm_parent(job, trials, objective, steps)
        reason = proposal.reason
        if parent is not None:
            reason = {**(reason or {}), "warm_start": {"parent": parent.id, "number": parent.number}}
        trial = repository.add_trial(
            session, job.id, len(trials) + len(to_run), strategy=proposal.candidate.strategy,
            params=proposal.candidate.params, steps=steps, reason=reason, fidelity=fraction,
            rung=0, parent_trial_id=parent.id if parent else None,
            epochs=round(fraction * _full_epochs(job, steps), 6),
        )  # fmt: skip
        to_run.append((trial.id, trial.attempt))
    return True


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
            max_dataset_elements=settings.max_dataset_elements,
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
            **_start(session, store, trial),
        }


def _start(session: Session, store: ArtifactStore, trial: Trial) -> dict[str, Any]:
    """How the trial starts (run_trial's keywords): its fidelity and, with a parent, the
    parent's checkpoint, continued for the trial's epochs when it is the rung below."""
    start: dict[str, Any] = {"fraction": 1.0 if trial.fidelity is None else trial.fidelity}
    parent = session.get(Trial, trial.parent_trial_id) if trial.parent_trial_id else None
    if parent is None or parent.checkpoint_artifact_id is None:
        return start
    start["start_from"] = store.resolve(session.get(Artifact, parent.checkpoint_artifact_id).path)
    if trial.rung > parent.rung:  # a continued rung, not a warm start
        start["resume_epochs"] = trial.epochs or 0.0
        start["prior_epochs"] = float((parent.metrics or {}).get("total_finetune_epochs", 0.0))
    return start


#: The keys of a claim that say how the trial starts (see :func:`_start`).
START_KEYS = ("fraction", "start_from", "resume_epochs", "prior_epochs")


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
                max_dataset_elements=settings.max_dataset_elements,
                should_stop=heartbeat.should_stop,
                on_progress=on_progress,
                on_stage=on_stage,
                **{k: claim[k] for k in START_KEYS if k in claim},
                metadata={
                    "job": job_id,
                    "trial": trial_id,
                    "steps": claim["steps"],
                    "fidelity": claim["fraction"],
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
