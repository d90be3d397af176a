"""service.core.storage: staged files go in place with the transaction that registers them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.db import Artifact, session_scope, upgrade
from service.core.settings import Settings
from service.core.storage import ArtifactStore, publishing_session


@pytest.fixture
def store_and_url(tmp_path: Path) -> tuple[ArtifactStore, str]:
    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    return ArtifactStore(settings.artifact_root), settings.database_url


def rows(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Artifact))


def test_paths_stay_inside_the_root(store_and_url) -> None:  # noqa: ANN001
    store, _ = store_and_url
    with pytest.raises(ValueError, match="leaves the artifact root"):
        store.resolve("../outside.bin")


def test_a_staged_file_is_published_with_its_commit(store_and_url) -> None:  # noqa: ANN001
    store, url = store_and_url
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"data")
    with publishing_session(url) as (session, files):
        store.register(session, "checkpoint", staged.relative, written_at=staged.path)
        files.append(staged)
        assert not staged.final.exists()  # not before the rows are ready
    assert staged.final.read_bytes() == b"data" and not staged.path.exists()
    assert rows(url) == 1


def test_an_error_in_the_transaction_publishes_nothing(store_and_url) -> None:  # noqa: ANN001
    store, url = store_and_url
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"data")
    with pytest.raises(RuntimeError), publishing_session(url) as (session, files):
        store.register(session, "checkpoint", staged.relative, written_at=staged.path)
        files.append(staged)
        raise RuntimeError("boom")
    assert not staged.path.exists() and not staged.final.exists() and rows(url) == 0


def test_a_failed_commit_takes_the_published_file_back(store_and_url, monkeypatch) -> None:  # noqa: ANN001
    store, url = store_and_url
    staged = store.stage("checkpoints")
    staged.path.write_bytes(b"data")

    def failing_commit(self: Session) -> None:
        assert staged.final.exists()  # published just before the commit
        raise OSError("disk full")

    with pytest.raises(OSError):
        with publishing_session(url) as (session, files):
            store.register(session, "checkpoint", staged.relative, written_at=staged.path)
            files.append(staged)
            monkeypatch.setattr(Session, "commit", failing_commit)
    monkeypatch.undo()
    assert not staged.path.exists() and not staged.final.exists() and rows(url) == 0


def test_writing_renames_on_success_and_cleans_up_on_error(store_and_url) -> None:  # noqa: ANN001
    store, _ = store_and_url
    with store.writing("weights") as (tmp, relative):
        tmp.write_bytes(b"w")
    assert store.resolve(relative).read_bytes() == b"w"
    with pytest.raises(RuntimeError), store.writing("weights") as (tmp, relative):
        tmp.write_bytes(b"w")
        raise RuntimeError
    assert not tmp.exists() and not store.resolve(relative).exists()
