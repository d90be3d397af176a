"""Request dependencies: the database session, settings, artifact store and dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.errors import ApiError
from service.core.auth import verify_token
from service.core.db import session_factory
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


def require_api_key(request: Request) -> None:
    """When the server requires keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    settings: Settings = request.app.state.settings
    if not settings.require_api_key:
        return
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    token = token or request.headers.get("x-api-key", "")
    if not token:
        raise ApiError(401, "an API key is required: send Authorization: Bearer <key>")
    session = session_factory(settings.database_url)()
    try:
        if verify_token(session, token, settings.secret_key.get_secret_value()) is None:
            raise ApiError(401, "invalid or revoked API key")
    finally:
        session.close()
