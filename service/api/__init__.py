"""The HTTP API (FastAPI): routers per resource, pydantic schemas, JSON errors naming the field."""

from service.api.app import create_app

__all__ = ["create_app"]
