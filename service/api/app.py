"""The FastAPI application: routers, error handlers, and start-up of the chosen mode.

`create_app(settings)` prepares the database (Alembic upgrade of an embedded SQLite file, or a
check that a shared database is at head), opens the artifact store, and picks the dispatcher:
in-process threads plus a sweeper (embedded) or Celery messages (distributed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service.api.deps import require_api_key
from service.api.errors import install_error_handlers
from service.api.routes import datasets, jobs, models, trials
from service.db import prepare_database
from service.settings import Settings, get_settings
from service.storage import ArtifactStore
from workers.dispatch import LocalDispatcher, make_dispatcher

DESCRIPTION = """
autocompress finds how to compress a trained PyTorch model.

1. `POST /v1/models`: register the model (zoo architecture, config, safetensors weights).
2. `POST /v1/jobs`: objective, search space, fine-tuning, budget (see the example).
3. Poll `GET /v1/jobs/{id}`; `GET /v1/jobs/{id}/pareto` (JSON) or `/pareto.svg` (picture).
4. `GET /v1/trials/{id}/checkpoint`: the packed checkpoint, loadable without pickle.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: from the environment)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        prepare_database(settings.database_url, auto_upgrade=settings.is_sqlite)
        app.state.settings = settings
        app.state.store = ArtifactStore(settings.artifact_root)
        app.state.dispatcher = make_dispatcher(settings)
        sweeper = None
        if isinstance(app.state.dispatcher, LocalDispatcher):
            from workers.jobs import Sweeper

            sweeper = Sweeper(settings, app.state.dispatcher)
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()
            if isinstance(app.state.dispatcher, LocalDispatcher):
                app.state.dispatcher.shutdown()

    app = FastAPI(
        title="autocompress",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (models, datasets, jobs, trials):
        app.include_router(module.router, dependencies=[Depends(require_api_key)])

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Liveness: the server answers and says which mode it runs in."""
        return {"status": "ok", "mode": "embedded" if settings.embedded else "distributed"}

    return app
