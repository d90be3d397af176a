"""Request dependencies: the database session, settings, artifact store, dispatcher, and the
caller (the API key behind the request, see `service.api.tenancy`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from service.api.errors import ApiError, NotFound
from service.api.tenancy import ANONYMOUS, Caller
from service.core.auth import verify_token
from service.core.db import MAX_ID, is_row_id, session_factory
from service.core.dispatch import Dispatcher
from service.core.settings import Settings
from service.core.storage import ArtifactStore


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def row_id_path(what: str) -> Any:
    """The type of a `{..._id}` path parameter naming a `what` row: an integer (else 422); one
    outside 1..MAX_ID can name no row, so it is a 404 like any missing one, before it reaches
    the database (where it would overflow the column)."""

    def in_range(value: int) -> int:
        if not is_row_id(value):
            raise NotFound(what, value)
        return value

    return Annotated[
        int,
        Path(
            description=f"The {what}'s id (1..{MAX_ID}; anything else is not found).",
            json_schema_extra={"minimum": 1, "maximum": MAX_ID},
        ),
        AfterValidator(in_range),
    ]


JobId = row_id_path("job")
TrialId = row_id_path("trial")
ModelId = row_id_path("model")
DatasetId = row_id_path("dataset")


def caller_of(request: Request) -> Caller:
    """Who is asking: when the server requires keys, the live key of `Authorization: Bearer
    <key>` or `X-API-Key: <key>` (401 otherwise); else the one shared tenant. Checked once per
    request."""
    cached = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    settings: Settings = request.app.state.settings
    if not settings.require_api_key:
        request.state.caller = ANONYMOUS
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    token = token or request.headers.get("x-api-key", "")
    if not token:
        raise ApiError(401, "an API key is required: send Authorization: Bearer <key>")
    session = session_factory(settings.database_url)()
    try:
        key = verify_token(session, token, settings.secret_key.get_secret_value())
        if key is None:
            raise ApiError(401, "invalid or revoked API key")
        request.state.caller = Caller(key_id=key.id, admin=bool(key.admin))
    finally:
        session.close()
    return request.state.caller


def require_api_key(request: Request) -> None:
    """The routers' guard: a request without a live key (when keys are required) is a 401."""
    caller_of(request)


CallerDep = Annotated[Caller, Depends(caller_of)]
