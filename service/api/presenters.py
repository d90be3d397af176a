"""Turning rows into API schemas: trial views, progress, the best trial and the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence

from search import METRIC_TABLE, Candidate, Objective, Observation, best_feasible, feasible_front
from service.api.schemas import JobPublic, Progress, TrialPublic
from service.core.db import Job, Trial

#: The front shown for a single objective: accuracy against size, each the way it is better.
DEFAULT_FRONT = [(name, METRIC_TABLE[name].better) for name in ("accuracy", "size_bytes")]


def objective_of(job: Job) -> Objective:
    return Objective.from_spec(job.spec["objective"])


def _observations(trials: Sequence[Trial]) -> list[Observation]:
    """The trials as the search library sees them, index for index: only a succeeded trial
    has metrics (a failed, cancelled or unfinished one is never feasible)."""
    return [
        Observation(
            Candidate(t.strategy, dict(t.params or {})),
            t.metrics if t.state == "succeeded" else None,
        )
        for t in trials
    ]


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
