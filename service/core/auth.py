"""API keys: created by `autocompress apikey create`, stored only as an HMAC of the token.

The token (`ac_...`) is printed once; the database keeps its HMAC-SHA256 under the server's
`AUTOCOMPRESS_SECRET_KEY`, so a leaked database does not leak usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db import ApiKey

TOKEN_PREFIX = "ac_"


def hash_token(token: str, secret: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def create_api_key(
    session: Session, name: str, secret: str, *, admin: bool = False
) -> tuple[ApiKey, str]:
    """A new key row and its token (the only time the token exists in clear); an `admin` key
    sees every tenant's models, datasets and jobs."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=token[:10], token_hash=hash_token(token, secret), admin=admin)
    session.add(key)
    session.flush()
    return key, token


def verify_token(session: Session, token: str, secret: str) -> ApiKey | None:
    """The live key whose HMAC matches `token`, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    digest = hash_token(token, secret)
    key = session.scalar(select(ApiKey).where(ApiKey.token_hash == digest))
    if key is None or key.revoked_at is not None:
        return None
    return key if hmac.compare_digest(key.token_hash, digest) else None
