"""Copying an upload to disk in chunks with a byte limit (weights, datasets).

The routes that take uploads are plain `def` routes: FastAPI runs them in its threadpool, so
this copy (like the torch and database work after it) never blocks the event loop.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

from service.api.errors import ApiError


def copy_upload(upload: UploadFile, path: Path, limit: int, field: str) -> int:
    """Copy `upload` to `path` in 1 MiB chunks; a 413 naming `field` past `limit` bytes."""
    written = 0
    with open(path, "wb") as fh:
        while chunk := upload.file.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise ApiError(413, f"the upload is larger than the limit of {limit} bytes", field)
            fh.write(chunk)
    return written
