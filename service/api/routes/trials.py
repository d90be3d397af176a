"""`/v1/trials`: one trial, and its packed checkpoint as a streamed file."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.api.deps import SessionDep, StoreDep
from service.api.errors import ApiError, NotFound
from service.api.presenters import objective_of, trial_public
from service.api.schemas import TrialPublic
from service.core.db import Artifact, Job, Trial

router = APIRouter(prefix="/v1/trials", tags=["trials"])


@router.get("/{trial_id}", response_model=TrialPublic)
def get_trial(trial_id: int, session: SessionDep) -> TrialPublic:
    """One trial with its metrics and why it was proposed."""
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound("trial", trial_id)
    return trial_public(trial, objective_of(session.get(Job, trial.job_id)))


@router.get(
    "/{trial_id}/checkpoint",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_checkpoint(trial_id: int, session: SessionDep, store: StoreDep) -> FileResponse:
    """The packed checkpoint (safetensors + JSON manifest), loadable without pickle."""
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound("trial", trial_id)
    if trial.checkpoint_artifact_id is None:
        raise ApiError(409, f"trial {trial_id} has no checkpoint (state {trial.state})")
    artifact = session.get(Artifact, trial.checkpoint_artifact_id)
    return FileResponse(
        store.resolve(artifact.path),
        media_type="application/octet-stream",
        filename=f"trial-{trial_id}.safetensors",
    )
