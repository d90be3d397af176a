"""Dataset references as the service resolves them: `upload:<id>` names an uploaded `.npz`
artifact; every other reference (builtin:, idx:, npz:) goes to the `operators` dataset loader
with the configured data roots. Used by the API (to validate a job) and by the workers (to
load)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from operators import DatasetError
from service.core.db import Artifact, parse_row_id
from service.core.settings import Settings

UPLOAD_SCHEME = "upload"
UPLOAD_KIND = "dataset"


def resolve_reference(ref: str, settings: Settings, session: Session) -> tuple[str, list[Path]]:
    """(reference for the operators dataset loader, the roots it may read from)."""
    scheme, _, value = ref.partition(":")
    if scheme != UPLOAD_SCHEME:
        return ref, list(settings.data_roots)
    ident = parse_row_id(value)
    artifact = session.get(Artifact, ident) if ident is not None else None
    if artifact is None or artifact.kind != UPLOAD_KIND:
        raise DatasetError(f"{ref}: no uploaded dataset {value!r} (upload one: POST /v1/datasets)")
    relative = Path(artifact.path)
    return f"npz:{relative.name}", [Path(settings.artifact_root) / relative.parent]
