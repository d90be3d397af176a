"""Artifact storage: files (weights, checkpoints) under one root, registered as `artifacts` rows.

Paths stored in the database are relative to the root; every path read back is checked to stay
inside it. Writes go to a temporary name and are renamed into place, so a crash never leaves a
half-written file under a registered name. A `StagedFile` lets the caller decide when the
rename happens: `repository.record_trial_success` renames a trial's checkpoint only once its
artifact row and the trial's result are in the same, committed transaction.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from service.core.db import Artifact, session_scope


@dataclass(frozen=True)
class StagedFile:
    """A new artifact being written at `path` (a temporary name) until `publish` renames it."""

    path: Path
    final: Path
    relative: str

    def publish(self) -> None:
        """Rename the written file to its final name (atomic on one filesystem)."""
        os.replace(self.path, self.final)

    def discard(self) -> None:
        """Remove the temporary file, if it is still there (never the published one)."""
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    """A folder of artifacts; `stage`/`writing` and `register` are all the workers need."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, relative: str) -> Path:
        """Absolute path of a stored artifact; refuses anything outside the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact path {relative!r} leaves the artifact root")
        return path

    def stage(self, kind: str, suffix: str = ".safetensors") -> StagedFile:
        """A fresh artifact of `kind`: write `.path`, then `publish()` it or `discard()` it."""
        relative = f"{kind}/{uuid.uuid4().hex}{suffix}"
        final = self.resolve(relative)
        final.parent.mkdir(parents=True, exist_ok=True)
        return StagedFile(final.with_name(final.name + ".part"), final, relative)

    @contextmanager
    def writing(self, kind: str, suffix: str = ".safetensors") -> Iterator[tuple[Path, str]]:
        """Yield a temporary path to write; on success it is renamed to the final relative path."""
        staged = self.stage(kind, suffix)
        try:
            yield staged.path, staged.relative
            staged.publish()
        finally:
            staged.discard()

    def register(
        self, session: Session, kind: str, relative: str, *, written_at: Path | None = None
    ) -> Artifact:
        """Add the `artifacts` row of a file under the root; `written_at` is where the file is
        now when it is not yet at its final place (a `StagedFile.path`)."""
        path = written_at if written_at is not None else self.resolve(relative)
        artifact = Artifact(
            kind=kind, path=relative, size_bytes=path.stat().st_size, sha256=sha256_of(path)
        )
        session.add(artifact)
        session.flush()
        return artifact


@contextmanager
def publishing_session(url: str) -> Iterator[tuple[Session, list[StagedFile]]]:
    """A transaction whose files go in place with it: yields (session, files); each StagedFile
    appended to `files` (its row registered in `session`) is published just before the commit,
    removed again if the commit fails, and never published if the block raises."""
    files: list[StagedFile] = []
    try:
        with session_scope(url) as session:
            yield session, files
            for staged in files:
                staged.publish()
    except BaseException:
        for staged in files:
            staged.final.unlink(missing_ok=True)
        raise
    finally:
        for staged in files:
            staged.discard()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
