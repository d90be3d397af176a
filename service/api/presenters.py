"""Turning rows into API schemas: trial views, progress, the best trial and the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Sequence

from search import Objective
from search.pareto import pareto_front
from service.api.schemas import JobPublic, Progress, TrialPublic
from service.db import Job, Trial

DEFAULT_FRONT = [("accuracy", "max"), ("size_bytes", "min")]


def objective_of(job: Job) -> Objective:
    return Objective.from_spec(job.spec["objective"])


def _numeric(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def trial_public(trial: Trial, objective: Objective) -> TrialPublic:
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
        progress=trial.progress,
        device=trial.device,
        checkpoint_url=(
            f"/v1/trials/{trial.id}/checkpoint" if trial.checkpoint_artifact_id else None
        ),
        created_at=trial.created_at,
        started_at=trial.started_at,
        finished_at=trial.finished_at,
    )


def feasible_trials(trials: Sequence[Trial], objective: Objective) -> list[Trial]:
    return [
        t
        for t in trials
        if t.state == "succeeded" and t.metrics and objective.is_feasible(t.metrics)
    ]


def best_trial(trials: Sequence[Trial], objective: Objective) -> Trial | None:
    """Best feasible trial for a single objective; for a Pareto objective, the front's first."""
    candidates = feasible_trials(trials, objective)
    if objective.kind == "pareto":
        front = pareto_trials(trials, objective)
        return front[0] if front else None
    metric, goal = objective.metrics[0]
    scored = [(t, _numeric(t.metrics, metric)) for t in candidates]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        return None
    sign = 1.0 if goal == "max" else -1.0
    return max(scored, key=lambda tv: (sign * tv[1], -tv[0].number))[0]


def front_metrics(objective: Objective) -> list[tuple[str, str]]:
    return list(objective.metrics) if objective.kind == "pareto" else DEFAULT_FRONT


def pareto_trials(trials: Sequence[Trial], objective: Objective) -> list[Trial]:
    """Non-dominated feasible trials over the objective's metrics (accuracy vs size_bytes for a
    single objective), sorted by the first metric."""
    goals = front_metrics(objective)
    candidates = [
        t
        for t in feasible_trials(trials, objective)
        if all(_numeric(t.metrics, m) is not None for m, _ in goals)
    ]
    indices = pareto_front([t.metrics for t in candidates], goals)
    front = [candidates[i] for i in indices]
    metric, goal = goals[0]
    return sorted(front, key=lambda t: t.metrics[metric], reverse=goal == "max")


def job_public(job: Job, trials: Sequence[Trial]) -> JobPublic:
    objective = objective_of(job)
    done = sum(t.state in ("succeeded", "failed", "cancelled") for t in trials)
    total = job.spec["budget"]["max_trials"]
    best = best_trial(trials, objective)
    return JobPublic(
        id=job.id,
        model_id=job.model_id,
        state=job.state,
        progress=Progress(
            trials_done=done,
            trials_total=total,
            running=sum(t.state == "running" for t in trials),
            queued=sum(t.state == "queued" for t in trials),
            fraction=1.0 if job.state in ("succeeded", "failed", "cancelled") else done / total,
        ),
        best=trial_public(best, objective) if best else None,
        baseline=job.baseline,
        stop_reason=job.stop_reason,
        error=job.error,
        spec=job.spec,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
