"""An embedded autocompress server in a scratch folder, for benchmarks that go through the
HTTP API (SQLite, in-process worker, no Postgres or Redis; nothing kept afterwards)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client import Client
from service.core.settings import Settings
from service.demo import LocalServer


@contextmanager
def embedded_api(folder: Path, timeout: float = 600) -> Iterator[tuple[LocalServer, Client]]:
    """A server whose home, artifacts and data live under ``folder``, and a client of it."""
    settings = Settings(home=folder / "home", database_url="", broker_url="",
                        artifact_root=folder / "artifacts", data_roots=[folder / "data"])  # fmt: skip
    settings.ensure_dirs()
    with LocalServer(settings, 0) as server, Client(server.url, api_key="", timeout=timeout) as api:
        yield server, api
