"""With AUTOCOMPRESS_REQUIRE_API_KEY, /v1 needs a live key; the database holds only its HMAC."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from service.core.auth import create_api_key
from service.core.db import ApiKey, db_now, session_scope
from service.core.settings import Settings
from service.main import create_app


def test_keys_are_required_checked_and_stored_hashed(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, secret_key="s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert client.get("/v1/jobs").status_code == 401
        with session_scope(settings.database_url) as session:
            key, token = create_api_key(session, "ci", "s3cret")
            key_id = key.id
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).json() == []
        assert client.get("/v1/jobs", headers={"X-API-Key": token}).status_code == 200
        assert client.get("/v1/jobs", headers={"X-API-Key": token + "x"}).status_code == 401
        with session_scope(settings.database_url) as session:
            stored = session.scalar(select(ApiKey))
            assert token not in (stored.token_hash, stored.prefix) and len(stored.token_hash) == 64
            session.get(ApiKey, key_id).revoked_at = db_now(session)
        reply = client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 401 and "revoked" in reply.json()["detail"]
