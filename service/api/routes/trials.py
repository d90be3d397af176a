"""`/v1/trials`: one trial, its packed checkpoint as a streamed file, and that checkpoint
exported for deployment (ONNX or `.pt2`, written on first request and kept in the artifact
store under `exports/<checkpoint sha256>.<format>`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from operators.export import MissingExtra, export_checkpoint
from service.api.deps import CallerDep, SessionDep, StoreDep, TrialId
from service.api.errors import ApiError
from service.api.presenters import finetune_epochs, objective_of, trial_public
from service.api.schemas import TrialPublic
from service.api.tenancy import owned_trial
from service.core.db import Artifact

router = APIRouter(prefix="/v1/trials", tags=["trials"])


@router.get("/{trial_id}", response_model=TrialPublic)
def get_trial(trial_id: TrialId, session: SessionDep, caller: CallerDep) -> TrialPublic:
    """One trial with its metrics, why it was proposed and, while running, stage and epoch."""
    trial, job = owned_trial(session, caller, trial_id)
    return trial_public(trial, objective_of(job), finetune_epochs(job))


@router.get(
    "/{trial_id}/checkpoint",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        409: {"description": "The trial has no checkpoint (yet, or it failed)."},
    },
)
def download_checkpoint(
    trial_id: TrialId, session: SessionDep, store: StoreDep, caller: CallerDep
) -> FileResponse:
    """The packed checkpoint (the compact v3 container, ``.acpk``: docs/job-spec.md), loadable
    without pickle."""
    trial, _job = owned_trial(session, caller, trial_id)
    if trial.checkpoint_artifact_id is None:
        raise ApiError(409, f"trial {trial_id} has no checkpoint (state {trial.state})")
    artifact = session.get(Artifact, trial.checkpoint_artifact_id)
    return FileResponse(
        store.resolve(artifact.path),
        media_type="application/octet-stream",
        filename=f"trial-{trial_id}.acpk",
    )


_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/{trial_id}/export",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The exported model: an ONNX file (opset 18; int8 layers as "
            "DequantizeLinear of int8 weights) or a `torch.export.save` archive (`.pt2`).",
            "content": {"application/octet-stream": _BINARY},
        },
        409: {"description": "The trial has no checkpoint (yet, or it failed), or it cannot be "
              "exported (no recorded input shape)."},
        422: {"description": "Unknown `format`, or ONNX asked where onnx / onnxscript are not "
              "installed (`pip install autocompress[models]`)."},
    },
)
def export_trial(
    trial_id: TrialId,
    session: SessionDep,
    store: StoreDep,
    caller: CallerDep,
    fmt: Literal["onnx", "pt2"] = Query(
        alias="format", description="`onnx` (onnxruntime and other ONNX runtimes) or `pt2` "
        "(`torch.export.load`).", examples=["onnx"],
    ),
) -> FileResponse:
    """The trial's packed checkpoint exported for deployment, in float32 except int8 layers
    (structurally removed channels stay removed, low-rank layers stay two layers)."""
    trial, _job = owned_trial(session, caller, trial_id)
    if trial.checkpoint_artifact_id is None:
        raise ApiError(409, f"trial {trial_id} has no checkpoint (state {trial.state})")
    artifact = session.get(Artifact, trial.checkpoint_artifact_id)
    target = store.resolve(f"exports/{artifact.sha256}.{fmt}")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_checkpoint(store.resolve(artifact.path), fmt, target)
        except MissingExtra as exc:
            raise ApiError(422, str(exc), "query.format") from None
        except ValueError as exc:
            raise ApiError(409, f"trial {trial_id} cannot be exported as {fmt}: {exc}") from None
    return FileResponse(
        target, media_type="application/octet-stream", filename=f"trial-{trial_id}.{fmt}"
    )
