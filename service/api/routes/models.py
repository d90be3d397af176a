"""`/v1/models`: register a trained model (architecture `source:name` + config + safetensors
weights). The model is sized on the meta device and the weights' header checked against it
before anything is allocated; the sources and the key_map are `operators.models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from safetensors import SafetensorError
from safetensors.torch import save_file
from sqlalchemy import select

from operators.format.checkpoint import load_weights
from operators.models.sources import (
    INPUT_DTYPES,
    SourceError,
    model_info,
    record_config,
    split_architecture,
    split_record_config,
)
from operators.models.weights import check_key_map
from service.api.deps import CallerDep, ModelId, SessionDep, SettingsDep, StoreDep
from service.api.errors import Invalid, NotFound
from service.api.pagination import Page, page_params, paginate
from service.api.schemas import ModelPublic
from service.api.tenancy import owned_model
from service.api.uploads import copy_upload
from service.core.db import Artifact, ModelRecord

router = APIRouter(prefix="/v1/models", tags=["models"])
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
ARCHITECTURE_CHARS = 64  # the models.architecture column


def _public(record: ModelRecord, artifact: Artifact) -> ModelPublic:
    config, input_shape, input_dtype = split_record_config(record.config)
    return ModelPublic(
        id=record.id,
        name=record.name,
        architecture=record.architecture,
        source=split_architecture(record.architecture)[0].kind,
        config=config,
        input_shape=input_shape,
        input_dtype=input_dtype,
        params=record.params,
        size_bytes=artifact.size_bytes,
        created_at=record.created_at,
    )


def _as_safetensors(path: Path, filename: str, trusted: bool) -> None:
    """safetensors always; a pickled state_dict only when the server runs with trusted uploads
    (rewritten in place as safetensors, so one reader checks every upload)."""
    if not filename.endswith(PICKLE_SUFFIXES):
        return
    if not trusted:
        raise Invalid(
            "weights",
            "pickled weights are refused (start the server with AUTOCOMPRESS_TRUSTED_UPLOADS=1 "
            "to allow them); upload a .safetensors file",
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Invalid("weights", "the pickled file does not hold a state_dict")
    save_file(_unshared(state), str(path))


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with storage of its own (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.detach().clone().contiguous() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    return out


def _json_form(field: str, text: str, kind: type) -> object:
    """A JSON form field that must decode to ``kind`` (a 422 naming the field otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid(field, f"not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise Invalid(field, f"must be a JSON {'object' if kind is dict else 'list'}")
    return value


@router.post("", status_code=201, response_model=ModelPublic)
def register_model(
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    caller: CallerDep,
    architecture: Annotated[
        str,
        Form(
            description="`source:name`: a zoo name (`lenet-300-100`, `mlp`, ... or "
            "`zoo:<name>`), `timm:<model_name>`, `hf:<task>` (image-classification, "
            "sequence-classification, audio-classification) or `torchvision:<name>`.",
            examples=["timm:resnet18"],
        ),
    ],
    weights: Annotated[UploadFile, File(description="The trained weights, .safetensors.")],
    config: Annotated[
        str,
        Form(
            description="JSON: the keyword arguments of the zoo architecture, of "
            "timm.create_model (never pretrained) or of torchvision; for hf:, a Hugging Face "
            "config.json object with a built-in model_type (no auto_map).",
            examples=['{"num_classes": 10, "in_chans": 1}'],
        ),
    ] = "{}",
    name: Annotated[str, Form(description="A label for the model.")] = "",
    input_shape: Annotated[
        str,
        Form(
            description="JSON list, one sample's shape, e.g. [3, 32, 32] or [128] (token ids); "
            "implied by zoo, timm and Hugging Face image configs, required for text models.",
            examples=["[128]"],
        ),
    ] = "",
    input_dtype: Annotated[
        str,
        Form(description=f"One of {', '.join(INPUT_DTYPES)} (int64: token ids); default: the "
             "source's (int64 for hf:sequence-classification, else float32)."),
    ] = "",
    key_map: Annotated[
        str,
        Form(
            description='JSON object renaming the uploaded weights: {"old": "new", ...} and/or '
            'prefix rules {"prefix": {"0.": "fc1."}}; two names mapped to one is a 422.',
            examples=['{"prefix": {"1.": "fc1.", "3.": "fc2."}}'],
        ),
    ] = "",
) -> ModelPublic:
    """Register a trained model; its weights (renamed by `key_map`) must fit the architecture
    exactly. Before anything is allocated the model is sized on the meta device (a 422 above
    AUTOCOMPRESS_MAX_MODEL_PARAMS) and the file's header is checked against it (a 422 listing
    missing, unexpected and wrongly shaped keys, with a suggested key_map when the shapes match
    in order). A plain `def`: copying, hashing, building and re-saving the weights run in
    FastAPI's threadpool, never on the event loop."""
    config_dict = _json_form("config", config, dict)
    shape = _json_form("input_shape", input_shape, list) if input_shape else None
    renames = _json_form("key_map", key_map, dict) if key_map else None
    if len(architecture) > ARCHITECTURE_CHARS:
        raise Invalid("architecture", f"longer than {ARCHITECTURE_CHARS} characters")
    try:
        check_key_map(renames)
        info = model_info(architecture, config_dict, input_shape=shape,
                          input_dtype=input_dtype or None, max_params=settings.max_model_params)
    except SourceError as exc:
        raise Invalid(exc.field, str(exc)) from exc
    with store.writing("weights") as (tmp, relative):
        copy_upload(weights, tmp, settings.max_upload_bytes, "weights")
        _as_safetensors(tmp, weights.filename or "", settings.trusted_uploads)
        try:
            model = load_weights(tmp, architecture, config_dict, key_map=renames,
                                 max_params=settings.max_model_params)
        except SourceError as exc:
            raise Invalid(exc.field, str(exc)) from exc
        except (SafetensorError, OSError, ValueError) as exc:
            raise Invalid("weights", f"not a readable .safetensors file: {exc}") from exc
        save_file(_unshared(model.state_dict()), str(tmp))
    artifact = store.register(session, "weights", relative)
    artifact.owner_key_id = caller.key_id
    record = ModelRecord(
        owner_key_id=caller.key_id,
        name=name or architecture,
        architecture=architecture,
        config=record_config(config_dict, info.input_shape, info.input_dtype),
        params=info.params,
        weights_artifact_id=artifact.id,
    )
    session.add(record)
    session.commit()
    return _public(record, artifact)


@router.get("/{model_id}", response_model=ModelPublic)
def get_model(model_id: ModelId, session: SessionDep, caller: CallerDep) -> ModelPublic:
    """A registered model."""
    record = owned_model(session, caller, model_id)
    if record is None:
        raise NotFound("model", model_id)
    return _public(record, session.get(Artifact, record.weights_artifact_id))


@router.get("", response_model=list[ModelPublic])
def list_models(
    session: SessionDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    page: Annotated[Page, Depends(page_params())],
) -> list[ModelPublic]:
    """The caller's models, newest first, a page at a time (`X-Next-Cursor` names the next)."""
    query = caller.scope(select(ModelRecord), ModelRecord.owner_key_id)
    records = paginate(session, query, ModelRecord.id, page, request, response)
    return [_public(r, session.get(Artifact, r.weights_artifact_id)) for r in records]
