"""`/v1/jobs`: submit, poll, list trials, see the Pareto front, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import Response as RawResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import DispatcherDep, SessionDep, SettingsDep
from service.api.errors import NotFound
from service.api.pareto_svg import render_front
from service.api.presenters import (
    front_metrics,
    job_public,
    objective_of,
    pareto_trials,
    trial_public,
)
from service.api.schemas import JobAccepted, JobCreate, JobPublic, ParetoPublic, TrialPublic
from service.api.validation import validate_job
from service.core import repository
from service.core.db import Job, Trial

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job_and_trials(session: Session, job_id: int) -> tuple[Job, list[Trial]]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job, repository.job_trials(session, job_id)


@router.post("", status_code=202, response_model=JobAccepted)
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
) -> JobAccepted:
    """Submit a compression job; it runs in the background. Poll the `Location`."""
    validate_job(body, session, settings)
    job = Job(model_id=body.model_id, spec=body.model_dump(mode="json"), seed=body.seed)
    session.add(job)
    session.commit()
    dispatcher.advance_job(job.id)  # only after the commit: the row is the truth
    location = f"/v1/jobs/{job.id}"
    response.headers["Location"] = location
    return JobAccepted(id=job.id, state=job.state, location=location)


@router.get("", response_model=list[JobPublic])
def list_jobs(session: SessionDep, limit: int = 50) -> list[JobPublic]:
    """The most recent jobs."""
    jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(min(limit, 500)))
    return [job_public(*_job_and_trials(session, j.id)) for j in jobs]


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, session: SessionDep) -> JobPublic:
    """State, progress (trials done of budget) and the best feasible trial so far."""
    return job_public(*_job_and_trials(session, job_id))


@router.get("/{job_id}/trials", response_model=list[TrialPublic])
def list_trials(job_id: int, session: SessionDep) -> list[TrialPublic]:
    """Every trial: strategy, parameters, why it was proposed, metrics and state."""
    job, trials = _job_and_trials(session, job_id)
    objective = objective_of(job)
    return [trial_public(t, objective) for t in trials]


@router.get("/{job_id}/pareto", response_model=ParetoPublic)
def get_pareto(job_id: int, session: SessionDep) -> ParetoPublic:
    """The non-dominated feasible trials (accuracy vs size_bytes for a single objective)."""
    job, trials = _job_and_trials(session, job_id)
    objective = objective_of(job)
    return ParetoPublic(
        job_id=job_id,
        metrics=[{"metric": m, "goal": g} for m, g in front_metrics(objective)],
        trials=[trial_public(t, objective) for t in pareto_trials(trials, objective)],
    )


@router.get(
    "/{job_id}/pareto.svg",
    response_class=RawResponse,
    responses={200: {"content": {"image/svg+xml": {}}, "description": "The front as a picture."}},
)
def get_pareto_svg(job_id: int, session: SessionDep) -> RawResponse:
    """The trials and the Pareto front as an SVG scatter plot (opens in the API docs)."""
    job, trials = _job_and_trials(session, job_id)
    objective = objective_of(job)
    svg = render_front(trials, pareto_trials(trials, objective), front_metrics(objective), objective)
    return RawResponse(svg, media_type="image/svg+xml")


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(job_id: int, session: SessionDep, dispatcher: DispatcherDep) -> JobPublic:
    """Ask the job to stop: queued trials are dropped, running ones stop at their next check."""
    if session.get(Job, job_id) is None:
        raise NotFound("job", job_id)
    if repository.request_cancel(session, job_id):
        session.commit()
        dispatcher.advance_job(job_id)  # only after the commit: the row is the truth
    return job_public(*_job_and_trials(session, job_id))
