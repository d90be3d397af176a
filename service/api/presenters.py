"""Turning rows into API schemas: trial views, progress, the best trial and the Pareto front."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from datetime import datetime, timezone

from search import METRIC_TABLE, Candidate, Objective, Observation, best_feasible, feasible_front
from search.metric_table import is_finite
from service.api.schemas import JobLinks, JobPublic, Progress, TrialPublic
from service.core.budget import Rungs, epochs_spent
from service.core.db import TERMINAL_JOB_STATES, Job, Trial, as_utc
from service.core.repository import constraint_violation

#: The front shown for a single objective: accuracy against size, each the way it is better.
DEFAULT_FRONT = [(name, METRIC_TABLE[name].better) for name in ("accuracy", "size_bytes")]


def objective_of(job: Job) -> Objective:
    return Objective.from_spec(job.spec["objective"])


def is_final(trial: Trial) -> bool:
    """A succeeded full-fidelity trial: the only kind the best trial, the closest one and the
    front are chosen from (a shorter rung of a multi-fidelity search is not a final result)."""
    return trial.state == "succeeded" and trial_fidelity(trial) >= 1.0


def trial_fidelity(trial: Trial) -> float:
    return 1.0 if trial.fidelity is None else float(trial.fidelity)


def _observations(trials: Sequence[Trial]) -> list[Observation]:
    """The trials as the search library sees them, index for index, with their fidelity: only
    a succeeded full-fidelity trial has metrics here (a failed, cancelled, unfinished or
    lower-rung one is never the best or on the front)."""
    return [
        Observation(
            Candidate(t.strategy, dict(t.params or {})),
            t.metrics if is_final(t) else None,
            fidelity=trial_fidelity(t),
        )
        for t in trials
    ]


def finetune_epochs(job: Job) -> float:
    """The fine-tuning epochs of each of the job's trials (a trial that records its own
    `epochs`, in a multi-fidelity job, counts those)."""
    return float((job.spec.get("finetune") or {}).get("epochs", 1.0))


def trial_public(trial: Trial, objective: Objective, epochs: float | None = None) -> TrialPublic:
    """The trial as the API shows it; `epochs` (the job's fine-tuning epochs, unless the trial
    records its own) gives `epoch`."""
    if trial.epochs is not None and epochs is not None:
        epochs = trial.epochs
    feasible = None
    if trial.state == "succeeded" and trial.metrics:
        feasible = objective.is_feasible(trial.metrics)
    return TrialPublic(
        id=trial.id,
        job_id=trial.job_id,
        number=trial.number,
        state=trial.state,
        strategy=trial.strategy,
        params=trial.params,
        steps=trial.steps,
        metrics=trial.metrics,
        feasible=feasible,
        reason=trial.reason,
        error=trial.error,
        attempt=trial.attempt,
        attempts=trial.attempts or [],
        worker=trial.worker,
        progress=trial.progress,
        stage=trial.stage if trial.state == "running" else None,
        epoch=None if epochs is None else round(trial.progress * epochs, 3),
        device=trial.device,
        checkpoint_url=(
            f"/v1/trials/{trial.id}/checkpoint" if trial.checkpoint_artifact_id else None
        ),
        fidelity=trial_fidelity(trial),
        rung=trial.rung or 0,
        parent=trial.parent_trial_id,
        epochs=trial.epochs,
        created_at=trial.created_at,
        started_at=trial.started_at,
        finished_at=trial.finished_at,
    )


def best_trial(trials: Sequence[Trial], objective: Objective) -> Trial | None:
    """The best feasible trial (:func:`search.best_feasible`; for a Pareto objective, the
    front's best on the first metric), the first of ``trials`` on ties (the routes pass them
    in trial order); None if none is feasible."""
    best = best_feasible(_observations(trials), objective)
    return None if best is None else trials[best]


def front_metrics(objective: Objective) -> list[tuple[str, str]]:
    return list(objective.metrics) if objective.kind == "pareto" else DEFAULT_FRONT


def pareto_trials(trials: Sequence[Trial], objective: Objective) -> list[Trial]:
    """Non-dominated feasible trials over the objective's metrics (accuracy vs size_bytes for a
    single objective; :func:`search.feasible_front`), sorted by the first metric."""
    goals = front_metrics(objective)
    front = [trials[i] for i in feasible_front(_observations(trials), objective, goals)]
    metric, goal = goals[0]
    return sorted(front, key=lambda t: t.metrics[metric], reverse=goal == "max")


def eta_seconds(job: Job, trials: Sequence[Trial], now: datetime | None = None) -> float | None:
    """Seconds until the job is likely done; None before a trial has finished, 0 once the job
    is finished.

    The work left is the running trials' expected remainder, the queued trials, the proposals
    the trial budget has left (`max_trials` counts proposals, rung-0 trials) and, with
    `budget.rungs`, the continuations still to come at each rung (a rung continues
    ``floor(n / eta)`` of its ``n``, at least one: the drain carries one trial to full
    fidelity). Each costs the mean duration of the finished trials of its rung (a rung none
    has finished yet: the nearest measured rung's, scaled by the epochs the rung adds). The
    work is laid out on `max_parallel` lanes, each next trial on the lane free first; a trial
    not yet created starts only while the time budget (`max_minutes`) and the epoch budget
    (`max_epochs`) are not spent, so the remaining minutes bound when the last trial starts.
    """
    if job.state in TERMINAL_JOB_STATES:
        return 0.0
    now = now or datetime.now(timezone.utc)
    rungs = Rungs.of(job)
    seconds = _rung_seconds(trials, rungs)
    if seconds is None:
        return None
    budget = job.spec["budget"]
    running = [t for t in trials if t.state == "running" and t.started_at]
    lanes = [
        max(0.0, seconds[_rung_of(t, rungs)] - (now - as_utc(t.started_at)).total_seconds())
        for t in running
    ]
    lanes += [0.0] * max(0, budget["max_parallel"] - len(lanes))
    heapq.heapify(lanes)
    for t in trials:  # queued trials run whatever the budgets say since they were created
        if t.state == "queued":
            heapq.heappush(lanes, heapq.heappop(lanes) + seconds[_rung_of(t, rungs)])
    left = math.inf
    if budget.get("max_minutes") and job.started_at:
        left = budget["max_minutes"] * 60 - (now - as_utc(job.started_at)).total_seconds()
    epochs_left = math.inf
    if budget.get("max_epochs"):
        epochs_left = budget["max_epochs"] - epochs_spent(list(trials))
    full_epochs = _full_epochs_estimate(job, trials, rungs)
    for rung in _trials_to_come(trials, rungs, budget["max_trials"]):
        if lanes[0] >= left or epochs_left <= 0:
            break  # nothing starts once the time or epoch budget is spent
        heapq.heappush(lanes, heapq.heappop(lanes) + seconds[rung])
        epochs_left -= _rung_share(rungs, rung) * full_epochs
    return round(max(lanes), 1)


def _rung_of(trial: Trial, rungs: Rungs) -> int:
    """The trial's rung among the job's ``rungs`` (0 for a trial of a single-fidelity job)."""
    return min(trial.rung or 0, rungs.top)


def _rung_share(rungs: Rungs, rung: int) -> float:
    """The share of a strategy's full fine-tuning that rung ``rung`` adds."""
    return rungs.fractions[rung] - (rungs.fractions[rung - 1] if rung else 0.0)


def _rung_seconds(trials: Sequence[Trial], rungs: Rungs) -> list[float] | None:
    """The expected duration of a trial at each rung (see :func:`eta_seconds`); None before
    any trial has finished."""
    measured: dict[int, list[float]] = {}
    for t in trials:
        if t.state in ("succeeded", "failed") and t.started_at and t.finished_at:
            duration = (as_utc(t.finished_at) - as_utc(t.started_at)).total_seconds()
            measured.setdefault(_rung_of(t, rungs), []).append(duration)
    if not measured:
        return None
    means = {rung: sum(d) / len(d) for rung, d in measured.items()}

    def expected(rung: int) -> float:
        if rung in means:
            return means[rung]
        nearest = min(means, key=lambda r: (abs(r - rung), r))
        return means[nearest] * _rung_share(rungs, rung) / _rung_share(rungs, nearest)

    return [expected(rung) for rung in range(rungs.top + 1)]


def _trials_to_come(trials: Sequence[Trial], rungs: Rungs, max_trials: int) -> list[int]:
    """The rung of each trial not yet created: the proposals the trial budget has left, then
    the continuations each higher rung has still to get."""
    created = [sum(_rung_of(t, rungs) == rung for t in trials) for rung in range(rungs.top + 1)]
    out = [0] * max(0, max_trials - created[0])
    expected = max_trials
    for rung in range(1, rungs.top + 1):
        expected = max(1, expected // rungs.eta)
        out += [rung] * max(0, expected - created[rung])
    return out


def _full_epochs_estimate(job: Job, trials: Sequence[Trial], rungs: Rungs) -> float:
    """A strategy's full fine-tuning epochs, from the trials' own `epochs` (each the share its
    rung adds), else the job's `finetune.epochs`."""
    full = [t.epochs / _rung_share(rungs, _rung_of(t, rungs)) for t in trials if t.epochs]
    return sum(full) / len(full) if full else finetune_epochs(job)


def closest_trial(trials: Sequence[Trial], objective: Objective) -> Trial | None:
    """When no trial is feasible: the succeeded trial with the smallest
    :func:`constraint_violation` (the first on ties); None if one is feasible or none can
    be measured against the constraints."""
    if best_trial(trials, objective) is not None:
        return None
    scored = [
        (constraint_violation(t.metrics, objective), t) for t in trials if is_final(t) and t.metrics
    ]
    scored = [(v, t) for v, t in scored if math.isfinite(v)]
    return min(scored, key=lambda vt: vt[0])[1] if scored else None


def violations_text(trial: Trial, objective: Objective) -> str:
    """The bounds `trial` misses, e.g. ``accuracy_drop 0.034 > max 0.01``."""
    parts = []
    for c in objective.constraints:
        value = (trial.metrics or {}).get(c.metric)
        if c.max is not None and is_finite(value) and value > c.max:
            parts.append(f"{c.metric} {value:.4g} > max {c.max:g}")
        if c.min is not None and is_finite(value) and value < c.min:
            parts.append(f"{c.metric} {value:.4g} < min {c.min:g}")
    return ", ".join(parts)


def job_stop_reason(
    job: Job, best: Trial | None, closest: Trial | None, objective: Objective
) -> str | None:
    """The job's `stop_reason`; for a job that finished with no feasible trial, followed by
    that it found none and which trial came closest (the search itself is unchanged)."""
    if job.state != "succeeded" or best is not None:
        return job.stop_reason
    text = "no trial met the constraints"
    if closest is not None:
        text += f"; closest: trial {closest.number} ({violations_text(closest, objective)})"
    return f"{job.stop_reason}; {text}" if job.stop_reason else text


def job_links(job_id: int) -> JobLinks:
    """The URLs of the job's results (see :class:`JobLinks`)."""
    base = f"/v1/jobs/{job_id}"
    return JobLinks(
        trials=f"{base}/trials",
        pareto=f"{base}/pareto",
        pareto_svg=f"{base}/pareto.svg",
        pareto_png=f"{base}/pareto.png",
        report=f"{base}/report",
    )


def job_public(job: Job, trials: Sequence[Trial]) -> JobPublic:
    objective = objective_of(job)
    proposals = [t for t in trials if not t.rung]  # continued rungs are not new trials
    done = sum(t.state in ("succeeded", "failed", "cancelled") for t in proposals)
    total = job.spec["budget"]["max_trials"]
    best = best_trial(trials, objective)
    closest = closest_trial(trials, objective)
    return JobPublic(
        id=job.id,
        model_id=job.model_id,
        state=job.state,
        progress=Progress(
            trials_done=done,
            trials_total=total,
            running=sum(t.state == "running" for t in trials),
            queued=sum(t.state == "queued" for t in trials),
            fraction=1.0 if job.state in TERMINAL_JOB_STATES else min(1.0, done / total),
            eta_seconds=eta_seconds(job, trials),
        ),
        best=trial_public(best, objective, finetune_epochs(job)) if best else None,
        closest=trial_public(closest, objective, finetune_epochs(job)) if closest else None,
        links=job_links(job.id),
        baseline=job.baseline,
        stop_reason=job_stop_reason(job, best, closest, objective),
        error=job.error,
        spec=job.spec,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
