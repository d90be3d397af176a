"""The OpenAPI schema as the service really answers: every error is an `ErrorBody`.

FastAPI documents only 422, with its own default body. `install_openapi(app)` post-processes
the schema FastAPI builds: `ErrorBody` (and `FieldError`) replace FastAPI's validation-error
schemas, and each operation lists every error status it can answer, derived from the route
itself, so a route added later is documented the same way:

- 401 where the API-key guard runs (`/v1`); 503 (with `Retry-After`) where the database or
  the broker is used (the guard, a session, the dispatcher);
- 404 where the path names a row (`{..._id}`);
- 400 where there is a request body (it may not parse); 413 where it is multipart (an
  upload over the limit);
- 422 wherever FastAPI validates input;
- any other error status a route declares in `responses=` (e.g. 409) gets the body too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from service.api.deps import caller_of, get_db, get_dispatcher, require_api_key
from service.api.errors import RETRY_AFTER_SECONDS, ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
DESCRIPTIONS = {
    400: "The request body could not be parsed (not JSON, not UTF-8, a malformed form).",
    401: "An API key is required (`Authorization: Bearer <key>`), or the key is not valid.",
    404: "No such row (or another tenant's): the id names nothing this caller can see.",
    409: "The request conflicts with the row's state.",
    413: "The upload is larger than the server's limit; `errors[0].field` names it.",
    422: "The input is invalid; `errors[].field` names each field at fault.",
    503: "The database or the message broker is unavailable; nothing was lost, retry after "
    "`Retry-After` seconds.",
}
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_GUARDS = (require_api_key, caller_of)
_BACKENDS = (*_GUARDS, get_db, get_dispatcher)


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` document the real error body and statuses (built once, cached)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_errors(app, build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(app: FastAPI, schema: dict[str, Any]) -> None:
    """Rewrite `schema` (FastAPI's, for `app`) in place; see the module docstring."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorBody"] = error_schema
    for route in iter_route_contexts(app.routes):  # included routers' routes, with prefixes
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        path = schema.get("paths", {}).get(route.path_format, {})
        for method in route.methods:
            operation = path.get(method.lower())
            if operation is not None:
                _document_operation(operation, _error_statuses(route, operation))
    for name in _FASTAPI_ERROR_SCHEMAS:
        components.pop(name, None)


def _error_statuses(route: RouteContext, operation: dict[str, Any]) -> set[int]:
    calls = _dependency_calls(route)
    statuses = {int(code) for code in operation.get("responses", {}) if code[:1] in "45"}
    if any(guard in calls for guard in _GUARDS):
        statuses.add(401)
    if any(backend in calls for backend in _BACKENDS):
        statuses.add(503)
    if route.dependant.path_params:
        statuses.add(404)
    content = operation.get("requestBody", {}).get("content", {})
    if content:
        statuses.add(400)
    if "multipart/form-data" in content:
        statuses.add(413)
    return statuses


def _dependency_calls(route: RouteContext) -> set[Any]:
    """Every callable the route's dependency tree runs (router dependencies included)."""
    calls, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    return calls


def _document_operation(operation: dict[str, Any], statuses: set[int]) -> None:
    responses = operation.setdefault("responses", {})
    declared = set(responses)  # by the route itself: its description and headers are kept
    for status in sorted(statuses):
        entry = responses.setdefault(str(status), {})
        entry.setdefault("description", DESCRIPTIONS.get(status, "An error."))
        schema = entry.get("content", {}).get("application/json", {}).get("schema", {})
        if not schema or schema.get("$ref", "").rsplit("/", 1)[-1] in _FASTAPI_ERROR_SCHEMAS:
            entry["content"] = {"application/json": {"schema": ERROR_REF}}
        if status == 503 and "503" not in declared:
            entry["headers"] = {
                "Retry-After": {
                    "description": f"Seconds to wait before retrying ({RETRY_AFTER_SECONDS}).",
                    "schema": {"type": "integer"},
                }
            }
