"""`/v1/jobs`: submit, poll, list trials, see the Pareto front, cancel."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.api.deps import CallerDep, DispatcherDep, JobId, SessionDep, SettingsDep
from service.api.errors import ApiError, ErrorBody
from service.api.pagination import Page, page_params, paginate
from service.api.presenters import (
    finetune_epochs,
    front_metrics,
    job_public,
    objective_of,
    pareto_trials,
    trial_public,
)
from service.api.schemas import (
    JobAccepted,
    JobCreate,
    JobPublic,
    JobState,
    ParetoPublic,
    TrialPublic,
    TrialState,
)
from service.api.tenancy import Caller, owned_job
from service.api.validation import validate_job
from service.core import repository
from service.core.db import Job, Trial
from service.core.dispatch import send_after_commit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job_and_trials(session: Session, caller: Caller, job_id: int) -> tuple[Job, list[Trial]]:
    job = owned_job(session, caller, job_id)
    return job, repository.job_trials(session, job_id)


IDEMPOTENCY_HEADER = "Idempotency-Key"


class IdempotencyConflict(ApiError):
    def __init__(self) -> None:
        super().__init__(
            409,
            f"this {IDEMPOTENCY_HEADER} was already used for a job with a different body; "
            "use a new key for a new job",
            f"header.{IDEMPOTENCY_HEADER}",
        )


def _replayed(session: Session, key: str, request_hash: str) -> Job | None:
    """The job an earlier POST with this key created (IdempotencyConflict if its body differs)."""
    job = repository.job_by_idempotency_key(session, key)
    if job is not None and job.request_hash != request_hash:
        raise IdempotencyConflict
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {"model": JobAccepted, "description": f"A retry with the same {IDEMPOTENCY_HEADER} "
              "and body: the job the first request created."},
        409: {"model": ErrorBody, "description": f"The {IDEMPOTENCY_HEADER} was used with "
              "another body."},
    },
)  # fmt: skip
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            max_length=150,
            description="Any unique string (a UUID): a retry with the same key and body returns "
            "the job the first request created (200) instead of a new one; the same key with "
            "another body is a 409.",
        ),
    ] = None,
) -> JobAccepted:
    """Submit a compression job; it runs in the background. Poll the `Location`. Once the job
    is committed the answer is 202 even if the broker is down (the sweeper sends the work)."""
    validate_job(body, session, settings, caller)
    spec = body.model_dump(mode="json")
    key = request_hash = None
    job: Job | None = None
    if idempotency_key is not None:  # keys are per tenant
        key = f"{caller.key_id or 0}:{idempotency_key}"
        request_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        job = _replayed(session, key, request_hash)
    if job is None:
        job = Job(
            model_id=body.model_id,
            spec=spec,
            seed=body.seed,
            owner_key_id=caller.key_id,
            idempotency_key=key,
            request_hash=request_hash,
        )
        session.add(job)
        try:
            session.commit()
        except IntegrityError:  # the same key committed by a concurrent request
            session.rollback()
            job = _replayed(session, key, request_hash) if key else None
            if job is None:
                raise
            response.status_code = 200
        else:  # only after the commit: the row is the truth (a lost message: the sweeper)
            send_after_commit(dispatcher.advance_job, job.id)
    else:
        response.status_code = 200
    location = f"/v1/jobs/{job.id}"
    response.headers["Location"] = location
    return JobAccepted(id=job.id, state=job.state, location=location)


@router.get("", response_model=list[JobPublic])
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    page: Annotated[Page, Depends(page_params())],
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
) -> list[JobPublic]:
    """The caller's jobs, newest first, a page at a time (`X-Next-Cursor` names the next)."""
    query = caller.scope(select(Job), Job.owner_key_id)
    if state is not None:
        query = query.where(Job.state == state)
    jobs = paginate(session, query, Job.id, page, request, response)
    return [job_public(j, repository.job_trials(session, j.id)) for j in jobs]


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobPublic:
    """State, progress (trials done of budget, ETA) and the best feasible trial so far."""
    return job_public(*_job_and_trials(session, caller, job_id))


@router.get("/{job_id}/trials", response_model=list[TrialPublic])
def list_trials(
    job_id: JobId,
    session: SessionDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    page: Annotated[Page, Depends(page_params(default=500))],
    state: Annotated[TrialState | None, Query(description="Only trials in this state.")] = None,
) -> list[TrialPublic]:
    """The job's trials in proposal order: strategy, parameters, why it was proposed, metrics,
    state and, while running, stage and epoch; a page at a time (`X-Next-Cursor`)."""
    job = owned_job(session, caller, job_id)
    query = select(Trial).where(Trial.job_id == job_id)
    if state is not None:
        query = query.where(Trial.state == state)
    trials = paginate(session, query, Trial.id, page, request, response, newest_first=False)
    objective, epochs = objective_of(job), finetune_epochs(job)
    return [trial_public(t, objective, epochs) for t in trials]


@router.get("/{job_id}/pareto", response_model=ParetoPublic)
def get_pareto(job_id: JobId, session: SessionDep, caller: CallerDep) -> ParetoPublic:
    """The non-dominated feasible trials (accuracy vs size_bytes for a single objective)."""
    job, trials = _job_and_trials(session, caller, job_id)
    objective = objective_of(job)
    return ParetoPublic(
        job_id=job_id,
        metrics=[{"metric": m, "goal": g} for m, g in front_metrics(objective)],
        trials=[trial_public(t, objective) for t in pareto_trials(trials, objective)],
    )


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(
    job_id: JobId, session: SessionDep, dispatcher: DispatcherDep, caller: CallerDep
) -> JobPublic:
    """Ask the job to stop: queued trials are dropped, running ones stop at their next check."""
    owned_job(session, caller, job_id)
    if repository.request_cancel(session, job_id):
        session.commit()
        dispatcher.advance_job(job_id)  # only after the commit: the row is the truth
    return job_public(*_job_and_trials(session, caller, job_id))
