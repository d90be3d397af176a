"""`/v1/models`: register a trained model (zoo architecture + config + safetensors weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, File, Form, UploadFile
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from operators import build_model
from service.api.deps import SessionDep, SettingsDep, StoreDep
from service.api.errors import Invalid, NotFound
from service.api.schemas import ModelPublic
from service.api.uploads import copy_upload
from service.core.db import Artifact, ModelRecord

router = APIRouter(prefix="/v1/models", tags=["models"])
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def _public(record: ModelRecord, artifact: Artifact) -> ModelPublic:
    return ModelPublic(
        id=record.id,
        name=record.name,
        architecture=record.architecture,
        config=record.config,
        params=record.params,
        size_bytes=artifact.size_bytes,
        created_at=record.created_at,
    )


def _read_weights(path: Path, filename: str, trusted: bool) -> dict[str, torch.Tensor]:
    """safetensors always; a pickled state_dict only when the server runs with trusted uploads."""
    if filename.endswith(PICKLE_SUFFIXES):
        if not trusted:
            raise Invalid(
                "weights",
                "pickled weights are refused (start the server with AUTOCOMPRESS_TRUSTED_UPLOADS=1 "
                "to allow them); upload a .safetensors file",
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise Invalid("weights", "the pickled file does not hold a state_dict")
        return state
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise Invalid("weights", f"not a readable .safetensors file: {exc}") from exc


@router.post("", status_code=201, response_model=ModelPublic)
def register_model(
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    architecture: Annotated[str, Form(description="A model-zoo name, e.g. lenet-300-100.")],
    weights: Annotated[UploadFile, File(description="The trained weights, .safetensors.")],
    config: Annotated[str, Form(description="JSON keyword arguments of the architecture.")] = "{}",
    name: Annotated[str, Form(description="A label for the model.")] = "",
) -> ModelPublic:
    """Register a trained model; its weights must load strictly into the architecture.
    A plain `def`: copying, hashing, building and re-saving the weights run in FastAPI's
    threadpool, never on the event loop."""
    try:
        config_dict = json.loads(config)
    except json.JSONDecodeError as exc:
        raise Invalid("config", f"not valid JSON: {exc}") from exc
    if not isinstance(config_dict, dict):
        raise Invalid("config", "must be a JSON object of keyword arguments")
    try:
        model = build_model(architecture, config_dict)
    except ValueError as exc:
        field = "architecture" if "architecture" in str(exc) else "config"
        raise Invalid(field, str(exc)) from exc
    with store.writing("weights") as (tmp, relative):
        copy_upload(weights, tmp, settings.max_upload_bytes, "weights")
        state = _read_weights(tmp, weights.filename or "", settings.trusted_uploads)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise Invalid("weights", f"do not fit {architecture} {config_dict}: {exc}") from exc
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    artifact = store.register(session, "weights", relative)
    record = ModelRecord(
        name=name or architecture,
        architecture=architecture,
        config=config_dict,
        params=sum(p.numel() for p in model.parameters()),
        weights_artifact_id=artifact.id,
    )
    session.add(record)
    session.commit()
    return _public(record, artifact)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: int, session: SessionDep) -> ModelPublic:
    """A registered model."""
    record = session.get(ModelRecord, model_id)
    if record is None:
        raise NotFound("model", model_id)
    return _public(record, session.get(Artifact, record.weights_artifact_id))
