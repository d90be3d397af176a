"""Streaming an upload to disk with a byte limit (weights, datasets)."""

from __future__ import annotations

from pathlib import Path

from fastapi import UploadFile

from service.storage import UploadTooLarge


async def copy_upload(upload: UploadFile, path: Path, limit: int) -> int:
    """Copy `upload` to `path` in 1 MiB chunks; UploadTooLarge past `limit` bytes."""
    written = 0
    with open(path, "wb") as fh:
        while chunk := await upload.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise UploadTooLarge(f"the upload is larger than the limit of {limit} bytes")
            fh.write(chunk)
    return written
