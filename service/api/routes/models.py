"""`/v1/models`: register a trained model (architecture `source:name` + config + safetensors
weights, or `export:` + a `torch.export.save` program). The model is sized on the meta device
and the weights' header checked against it before anything is allocated; the sources and the
key_map are `operators.models`, the program reader `operators.export.program`.

An `export:` program is copied (size-limited) into the artifact store as `program/<id>.pt2`,
checked entry by entry without unpickling anything (a refused entry is a 422 on `program`
naming it, and neither file nor row is kept), and registered as architecture
`export:program/<id>.pt2`, which workers read under the artifact root (allowed in
`service.main`). Its weights are the archive's own unless a `weights` file overrides them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from safetensors import SafetensorError
from safetensors.torch import save_file
from sqlalchemy import select
from sqlalchemy.orm import Session

from operators.export.program import read_archive
from operators.format.checkpoint import load_weights
from operators.models.sources import (
    INPUT_DTYPES,
    SourceError,
    model_info,
    record_config,
    split_architecture,
    split_record_config,
)
from operators.models.sources import build as build_source
from operators.models.weights import check_key_map
from service.api.deps import CallerDep, ModelId, SessionDep, SettingsDep, StoreDep
from service.api.errors import ApiError, Invalid, NotFound
from service.api.pagination import Page, page_params, paginate
from service.api.schemas import ModelPublic
from service.api.tenancy import Caller, owned_model
from service.api.uploads import copy_upload
from service.core.db import Artifact, ModelRecord
from service.core.settings import Settings
from service.core.storage import ArtifactStore

router = APIRouter(prefix="/v1/models", tags=["models"])
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
ARCHITECTURE_CHARS = 64  # the models.architecture column
EXPORT = ("export", "export:")


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
            "sequence-classification, audio-classification), `torchvision:<name>`, or "
            "`export:` with the `program` file (a torch.export.save archive).",
            examples=["timm:resnet18"],
        ),
    ],
    weights: Annotated[
        UploadFile | None,
        File(description="The trained weights, .safetensors; required except for `export:`, "
             "whose program carries its weights (a file given here replaces them)."),
    ] = None,
    program: Annotated[
        UploadFile | None,
        File(description="For `export:` only: a `.pt2` archive written by torch.export.save, "
             "read without unpickling anything (the sample-input pickle is scanned, never run; "
             "extra files are never read; a pickle naming anything but tensors, a pickled weight "
             "or constant, native code or a non-ATen node target is a 422 naming the archive "
             "entry). Export with a dynamic batch dimension."),
    ] = None,
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
    in order). `export:` takes the `program` file instead (its own weights; see the module
    docstring). A plain `def`: copying, hashing, building and re-saving the weights run in
    FastAPI's threadpool, never on the event loop."""
    config_dict = _json_form("config", config, dict)
    shape = _json_form("input_shape", input_shape, list) if input_shape else None
    renames = _json_form("key_map", key_map, dict) if key_map else None
    if len(architecture) > ARCHITECTURE_CHARS:
        raise Invalid("architecture", f"longer than {ARCHITECTURE_CHARS} characters")
    try:
        check_key_map(renames)
    except SourceError as exc:
        raise Invalid(exc.field, str(exc)) from exc
    if architecture in EXPORT or program is not None:
        return _register_export(session, settings, store, caller, architecture, config_dict,
                                program, weights, name, renames, shape, input_dtype)  # fmt: skip
    if architecture.startswith("export:"):
        raise Invalid("architecture", "give `export:` and the archive as the `program` file")
    try:
        info = model_info(architecture, config_dict, input_shape=shape,
                          input_dtype=input_dtype or None, max_params=settings.max_model_params)
    except SourceError as exc:
        raise Invalid(exc.field, str(exc)) from exc
    if weights is None:
        raise Invalid("weights", "required: the trained weights as a .safetensors file")
    with store.writing("weights") as (tmp, relative):
        _store_weights(tmp, weights, settings, architecture, config_dict, renames)
    return _record(session, store, caller, [("weights", relative)], name or architecture,
                   architecture, record_config(config_dict, info.input_shape, info.input_dtype),
                   info.params)  # fmt: skip


def _store_weights(tmp: Path, weights: UploadFile, settings: Settings, architecture: str,
                   config: dict, renames: dict | None) -> None:  # fmt: skip
    """Copy the uploaded weights to ``tmp``, fit them to the model, rewrite them as safetensors."""
    copy_upload(weights, tmp, settings.max_upload_bytes, "weights")
    _as_safetensors(tmp, weights.filename or "", settings.trusted_uploads)
    try:
        model = load_weights(tmp, architecture, config, key_map=renames,
                             max_params=settings.max_model_params)  # fmt: skip
    except SourceError as exc:
        raise Invalid(exc.field, str(exc)) from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise Invalid("weights", f"not a readable .safetensors file: {exc}") from exc
    save_file(_unshared(model.state_dict()), str(tmp))


def _register_export(
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    caller: Caller,
    architecture: str,
    config: dict,
    program: UploadFile | None,
    weights: UploadFile | None,
    name: str,
    renames: dict | None,
    shape: list | None,
    input_dtype: str,
) -> ModelPublic:
    """``export:`` with its ``program``: both files are staged and checked, then kept together
    with their rows, or neither is (see the module docstring)."""
    if architecture not in EXPORT:
        raise Invalid("architecture", f"a `program` file is for `export:` only, not {architecture!r}")
    if program is None:
        raise Invalid("program", "required for export:: a .pt2 archive from torch.export.save")
    if config:
        raise Invalid("config", "must be {} for export: (the program fixes the model)")
    limit = settings.max_upload_bytes
    with store.writing("program", ".pt2") as (program_tmp, program_relative):
        copy_upload(program, program_tmp, limit, "program")
        label = program.filename or "program"

        def invalid(field: str, exc: Exception) -> Invalid:  # no server path in the answer
            return Invalid(field, str(exc).replace(f"export:{program_tmp}", label)
                           .replace(str(program_tmp), label))  # fmt: skip

        staged = f"export:{program_tmp}"
        try:
            read_archive(program_tmp, max_entry_bytes=limit, max_total_bytes=limit)
            info = model_info(staged, {}, input_shape=shape, input_dtype=input_dtype or None,
                              max_params=settings.max_model_params)  # fmt: skip
        except SourceError as exc:
            raise invalid("program" if exc.field == "architecture" else exc.field, exc) from exc
        except ValueError as exc:
            raise invalid("program", exc) from exc
        except Exception as exc:  # a checked, well-formed program that torch cannot run as a module
            raise invalid("program", RuntimeError(f"cannot be built as a module ({exc!r})")) from exc
        with store.writing("weights") as (tmp, relative):
            if weights is not None:
                try:
                    _store_weights(tmp, weights, settings, staged, {}, renames)
                except ApiError as exc:
                    raise ApiError(exc.status, str(invalid(exc.field or "weights", exc)), exc.field) from exc
            else:
                save_file(_unshared(build_source(staged, {}).state_dict()), str(tmp))
    architecture = f"export:{program_relative}"
    return _record(session, store, caller, [("weights", relative), ("program", program_relative)],
                   name or program.filename or architecture, architecture,
                   record_config({}, info.input_shape, info.input_dtype), info.params)  # fmt: skip


def _record(
    session: Session,
    store: ArtifactStore,
    caller: Caller,
    files: list[tuple[str, str]],
    name: str,
    architecture: str,
    config: dict,
    params: int,
) -> ModelPublic:
    """Register the stored ``files`` (``(kind, relative path)``, the weights first) and the
    model row in one commit."""
    artifacts = [store.register(session, kind, relative) for kind, relative in files]
    for artifact in artifacts:
        artifact.owner_key_id = caller.key_id
    artifact = artifacts[0]
    record = ModelRecord(
        owner_key_id=caller.key_id,
        name=name,
        architecture=architecture,
        config=config,
        params=params,
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
