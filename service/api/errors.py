"""Errors as JSON that name the field at fault: `{"detail": ..., "errors": [{"field", "message"}]}`.

Every answer that is not a success has this body (`ErrorBody`, documented in the OpenAPI
schema by `service.api.openapi`): the service's own errors (`ApiError`), request validation
(422), Starlette's HTTP errors (404 of an unknown path, 405 with its `Allow` header), a
database or message broker that cannot be reached (503 with `Retry-After`; nothing was lost,
the request can be sent again), and anything unexpected (500, logged with its traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.dispatch import DispatchUnavailable
from service.core.repository import is_transient

log = logging.getLogger(__name__)

#: Seconds a client is told to wait (`Retry-After`) when the database or broker is down.
RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    """One problem and where it is."""

    field: str = Field(
        description="Dotted path of the input at fault: `body.budget.max_trials`, "
        "`path.job_id`, `query.limit`, or a multipart field such as `file`.",
        examples=["body.budget.max_trials"],
    )
    message: str = Field(examples=["Input should be greater than or equal to 1"])


class ErrorBody(BaseModel):
    """The body of every error answer."""

    detail: str = Field(
        description="What went wrong, in one line (for a 422: `field: message; ...`).",
        examples=["body.budget.max_trials: Input should be greater than or equal to 1"],
    )
    errors: list[FieldError] = Field(
        description="One entry per input at fault; empty when no single input is to blame."
    )


class ApiError(Exception):
    """An error with its HTTP status and, where one is at fault, the field's dotted path."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class NotFound(ApiError):
    def __init__(self, what: str, ident: int) -> None:
        super().__init__(404, f"{what} {ident} not found")


class Invalid(ApiError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, message, field)


def error_response(
    status: int,
    detail: str,
    errors: Iterable[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one place the error body is built."""
    body = ErrorBody(detail=detail, errors=[FieldError(**e) for e in errors])
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


def _loc_to_field(loc: tuple | list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unavailable(what: str) -> JSONResponse:
    return error_response(
        503,
        f"the {what} is unavailable; nothing was lost, retry in {RETRY_AFTER_SECONDS} s",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with an `ErrorBody`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.message}] if exc.field else []
        detail = f"{exc.field}: {exc.message}" if exc.field else exc.message
        return error_response(exc.status, detail, errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _loc_to_field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(422, detail, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # keeps the exception's headers: a 405 carries `Allow`
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(DispatchUnavailable)
    async def _broker_down(_: Request, exc: DispatchUnavailable) -> JSONResponse:
        log.warning("answering 503: %s", exc)
        return _unavailable("message broker")

    async def _database_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, (DisconnectionError, PoolTimeout)) or is_transient(exc):
            log.warning("answering 503, the database is unavailable: %s", exc)
            return _unavailable("database")
        log.error("database error", exc_info=exc)
        return error_response(500, "internal server error")

    for db_error in (DBAPIError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(db_error, _database_error)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal server error")
