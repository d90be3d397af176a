"""service.main, the composition root: the app of each mode gets its dispatcher and hooks."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.core.settings import Settings
from service.main import create_app
from workers.dispatch import CeleryDispatcher, LocalDispatcher
from workers.sweeper import Sweeper


def sweepers() -> list[Sweeper]:
    import threading

    return [t for t in threading.enumerate() if isinstance(t, Sweeper) and t.is_alive()]


def test_embedded_app_runs_local_workers_and_a_sweeper_while_it_serves(tmp_path: Path) -> None:
    before = len(sweepers())
    app = create_app(Settings(home=tmp_path))
    with TestClient(app) as client:
        assert client.get("/healthz").json()["mode"] == "embedded"
        dispatcher = app.state.dispatcher
        assert isinstance(dispatcher, LocalDispatcher) and dispatcher._trials is not None
        assert len(sweepers()) == before + 1
    assert dispatcher._trials is None  # shut down with the app
    for thread in sweepers()[before:]:
        thread.join(timeout=5)
    assert len(sweepers()) == before
    with TestClient(app) as client:  # the same app can be started again
        assert app.state.dispatcher._trials is not None


def test_distributed_app_sends_celery_messages_and_runs_no_sweeper(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/15")
    before = len(sweepers())
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/healthz").json()["mode"] == "distributed"
        assert isinstance(app.state.dispatcher, CeleryDispatcher)
        assert len(sweepers()) == before  # the workers' main processes sweep
