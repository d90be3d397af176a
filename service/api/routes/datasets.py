"""`/v1/datasets`: upload an `.npz` (x_train, y_train, x_val, y_val; no pickle) for `upload:<id>`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, Response, UploadFile
from pydantic import BaseModel, Field
from sqlalchemy import select

from operators.data.datasets import DatasetError, NpzSummary, inspect_npz
from service.api.deps import CallerDep, DatasetId, SessionDep, SettingsDep, StoreDep
from service.api.errors import Invalid, NotFound
from service.api.pagination import Page, page_params, paginate
from service.api.tenancy import owned_upload
from service.api.uploads import copy_upload
from service.core.datasets import UPLOAD_KIND, UPLOAD_SCHEME
from service.core.db import Artifact

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class DatasetPublic(BaseModel):
    id: int
    ref: str = Field(description="The reference to use as a job's `dataset`.", examples=["upload:3"])
    size_bytes: int
    train_samples: int
    val_samples: int
    input_shape: list[int]
    num_classes: int


REF = "not a usable .npz dataset"  # how a message of `inspect_npz` begins


def _summary(path: Path) -> NpzSummary:
    """A stored upload's shapes, from its `.npy` headers and its labels (cached per file): its
    sample arrays are never inflated in the API process; the workers load them."""
    return inspect_npz(path, ref=REF, verify=False)


def _describe(artifact: Artifact, data: NpzSummary) -> DatasetPublic:
    return DatasetPublic(
        id=artifact.id,
        ref=f"{UPLOAD_SCHEME}:{artifact.id}",
        size_bytes=artifact.size_bytes,
        train_samples=data.train_samples,
        val_samples=data.val_samples,
        input_shape=list(data.input_shape),
        num_classes=data.num_classes,
    )


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_val, y_val")],
) -> DatasetPublic:
    """Upload a dataset; it is checked before it is accepted: from its `.npy` headers (no
    pickle, numeric arrays whose shapes agree, at most `AUTOCOMPRESS_MAX_DATASET_ELEMENTS`
    elements, sizes that match the zip's), then streamed once for its CRCs and labels; never
    inflated here. Anything else is a 422 naming `file`, and nothing is kept.
    A plain `def`: the copy, the check and the database run in FastAPI's threadpool."""
    with store.writing(UPLOAD_KIND, ".npz") as (tmp, relative):
        copy_upload(file, tmp, settings.max_upload_bytes, "file")
        try:
            data = inspect_npz(tmp, settings.max_dataset_elements, REF, verify=True)
        except DatasetError as exc:
            raise Invalid("file", str(exc)) from exc
        artifact = store.register(session, UPLOAD_KIND, relative, written_at=tmp)
        artifact.owner_key_id = caller.key_id
        session.commit()  # the file is renamed into place only after its row is committed
    return _describe(artifact, data)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(
    dataset_id: DatasetId, session: SessionDep, store: StoreDep, caller: CallerDep
) -> DatasetPublic:
    """An uploaded dataset and its shapes."""
    artifact = owned_upload(session, caller, dataset_id)
    if artifact is None:
        raise NotFound("dataset", dataset_id)
    return _describe(artifact, _summary(store.resolve(artifact.path)))


@router.get("", response_model=list[DatasetPublic])
def list_datasets(
    session: SessionDep,
    store: StoreDep,
    caller: CallerDep,
    request: Request,
    response: Response,
    page: Annotated[Page, Depends(page_params())],
) -> list[DatasetPublic]:
    """The caller's uploaded datasets, newest first, a page at a time (`X-Next-Cursor`)."""
    query = caller.scope(select(Artifact).where(Artifact.kind == UPLOAD_KIND), Artifact.owner_key_id)
    uploads = paginate(session, query, Artifact.id, page, request, response)
    return [_describe(a, _summary(store.resolve(a.path))) for a in uploads]
