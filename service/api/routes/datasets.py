"""`/v1/datasets`: upload an `.npz` (x_train, y_train, x_val, y_val; no pickle) for `upload:<id>`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from pydantic import BaseModel, Field

from operators import Dataset, DatasetError, load_dataset
from service.api.deps import SessionDep, SettingsDep, StoreDep
from service.api.errors import Invalid, NotFound
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


def _load(path: Path) -> Dataset:
    return load_dataset(f"npz:{path.name}", [path.parent])


def _describe(artifact: Artifact, data: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=artifact.id,
        ref=f"{UPLOAD_SCHEME}:{artifact.id}",
        size_bytes=artifact.size_bytes,
        train_samples=len(data.y_train),
        val_samples=len(data.y_val),
        input_shape=list(data.input_shape),
        num_classes=data.num_classes,
    )


@router.post("", status_code=201, response_model=DatasetPublic)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description=".npz with x_train, y_train, x_val, y_val")],
) -> DatasetPublic:
    """Upload a dataset; it is checked (loaded without pickle) before it is accepted.
    A plain `def`: the copy, the check and the database run in FastAPI's threadpool."""
    with store.writing(UPLOAD_KIND, ".npz") as (tmp, relative):
        copy_upload(file, tmp, settings.max_upload_bytes, "file")
        try:
            data = _load(tmp)  # checked once, before it is accepted
        except (DatasetError, ValueError, OSError) as exc:
            raise Invalid("file", f"not a usable .npz dataset: {exc}") from exc
    artifact = store.register(session, UPLOAD_KIND, relative)
    session.commit()
    return _describe(artifact, data)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: int, session: SessionDep, store: StoreDep) -> DatasetPublic:
    """An uploaded dataset and its shapes."""
    artifact = session.get(Artifact, dataset_id)
    if artifact is None or artifact.kind != UPLOAD_KIND:
        raise NotFound("dataset", dataset_id)
    return _describe(artifact, _load(store.resolve(artifact.path)))
