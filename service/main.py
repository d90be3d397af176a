"""The composition root: the one place that wires the workers into the API.

    uvicorn --factory service.main:create_app     # what `autocompress serve` runs

`create_app(settings)` builds the concrete dispatcher from `workers/` and hands it to
`service.api.create_app`, which knows only the `Dispatcher` protocol of `service.core`:

- embedded (no broker): a `LocalDispatcher` (trials on threads of this process) and a
  `Sweeper` thread, started after the database is ready and stopped at shut-down;
- distributed: a `CeleryDispatcher` that sends JSON messages to `autocompress worker`
  processes, whose main process runs the sweeper.

`autocompress serve`, `autocompress demo` and the tests build their app here. It also lets the
`export:` model source read programs under the artifact root (`operators.export.allow_root`).
"""

from __future__ import annotations

from fastapi import FastAPI

from operators.export import allow_root
from service import api
from service.core.settings import Settings, get_settings
from workers.dispatch import CeleryDispatcher, LocalDispatcher
from workers.sweeper import Sweeper


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: from the environment) with the workers of its mode."""
    settings = settings or get_settings()
    allow_root(settings.artifact_root)  # export: programs are stored there (routes/models.py)
    if not settings.embedded:
        return api.create_app(settings, dispatcher=CeleryDispatcher.from_settings(settings))
    dispatcher = LocalDispatcher(settings)
    sweepers: list[Sweeper] = []

    def start_workers() -> None:
        dispatcher.start()
        sweepers.append(Sweeper(settings, dispatcher))
        sweepers[-1].start()

    def stop_workers() -> None:
        while sweepers:
            sweepers.pop().stop()
        dispatcher.shutdown()

    return api.create_app(
        settings, dispatcher=dispatcher, on_startup=[start_workers], on_shutdown=[stop_workers]
    )
