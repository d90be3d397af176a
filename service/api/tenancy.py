"""Tenants: with keys required, every model, dataset, job (and through its job every trial,
checkpoint and event) belongs to the API key that created it.

`Caller` is who is asking (built from the request's key by `service.api.deps.caller_of`);
the `owned_*` lookups are the one place that decides what a caller may see. Another key's row
is a 404, exactly like a missing one, so ids reveal nothing; an admin key sees every row;
without keys required everyone is an admin of one shared tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.api.errors import NotFound
from service.core.datasets import UPLOAD_KIND
from service.core.db import Artifact, Job, ModelRecord, Trial


@dataclass(frozen=True)
class Caller:
    """The key behind a request: its id (recorded as `owner_key_id` on what it creates) and
    whether it is an admin key."""

    key_id: int | None = None
    admin: bool = True

    def sees(self, owner_key_id: int | None) -> bool:
        return self.admin or owner_key_id == self.key_id

    def scope(self, query: Select, owner_column: Any) -> Select:
        """`query` restricted to the caller's rows (unchanged for an admin)."""
        return query if self.admin else query.where(owner_column == self.key_id)


#: The caller when the server does not require keys: one tenant, everything visible.
ANONYMOUS = Caller()


def owned_job(session: Session, caller: Caller, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or not caller.sees(job.owner_key_id):
        raise NotFound("job", job_id)
    return job


def owned_trial(session: Session, caller: Caller, trial_id: int) -> tuple[Trial, Job]:
    """The trial and its job, if the caller owns the job."""
    trial = session.get(Trial, trial_id)
    job = session.get(Job, trial.job_id) if trial is not None else None
    if job is None or not caller.sees(job.owner_key_id):
        raise NotFound("trial", trial_id)
    return trial, job


def owned_model(session: Session, caller: Caller, model_id: int) -> ModelRecord | None:
    """The model, or None when it does not exist or is another tenant's."""
    record = session.get(ModelRecord, model_id)
    return record if record is not None and caller.sees(record.owner_key_id) else None


def owned_upload(session: Session, caller: Caller, artifact_id: int) -> Artifact | None:
    """The uploaded dataset, or None when it does not exist or is another tenant's."""
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.kind != UPLOAD_KIND or not caller.sees(artifact.owner_key_id):
        return None
    return artifact
