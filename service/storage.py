"""Artifact storage: files (weights, checkpoints) under one root, registered as `artifacts` rows.

Paths stored in the database are relative to the root; every path read back is checked to stay
inside it. Writes go to a temporary name and are renamed into place, so a crash never leaves a
half-written file under a registered name.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from service.db import Artifact


class ArtifactStore:
    """A folder of artifacts; `path_for` and `register` are all the workers need."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, relative: str) -> Path:
        """Absolute path of a stored artifact; refuses anything outside the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact path {relative!r} leaves the artifact root")
        return path

    def path_for(self, kind: str, suffix: str = ".safetensors") -> tuple[Path, str]:
        """A fresh (absolute, relative) path for a new artifact of `kind`."""
        relative = f"{kind}/{uuid.uuid4().hex}{suffix}"
        path = self.resolve(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, relative

    @contextmanager
    def writing(self, kind: str, suffix: str = ".safetensors") -> Iterator[tuple[Path, str]]:
        """Yield a temporary path to write; on success it is renamed to the final relative path."""
        final, relative = self.path_for(kind, suffix)
        tmp = final.with_name(final.name + ".part")
        try:
            yield tmp, relative
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def register(self, session: Session, kind: str, relative: str) -> Artifact:
        """Add the `artifacts` row of a file already written under the root."""
        path = self.resolve(relative)
        artifact = Artifact(
            kind=kind, path=relative, size_bytes=path.stat().st_size, sha256=sha256_of(path)
        )
        session.add(artifact)
        session.flush()
        return artifact

    def delete(self, relative: str) -> None:
        self.resolve(relative).unlink(missing_ok=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
