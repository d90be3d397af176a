"""The FastAPI application: routers, error handlers, and the lifespan of the chosen mode.

`create_app(settings, dispatcher=...)` is given everything it cannot build itself: the
dispatcher (how follow-up work is sent; see `service.core.dispatch`) and hooks to run at
start-up and shut-down (e.g. the embedded mode's sweeper). It never imports `workers`; the
composition root `service.main` builds those and calls it. At start-up it prepares the
database (Alembic upgrade of an embedded SQLite file, or a check that a shared database is at
head) and opens the artifact store, then runs the start-up hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from service.api.deps import require_api_key
from service.api.errors import install_error_handlers
from service.api.openapi import install_openapi
from service.api.routes import datasets, events, jobs, models, observability, report, trials
from service.core.db import prepare_database
from service.core.dispatch import Dispatcher
from service.core.settings import Settings
from service.core.storage import ArtifactStore

DESCRIPTION = """
autocompress finds how to compress a trained PyTorch model.

1. `POST /v1/models`: register the model (zoo architecture, config, safetensors weights).
2. `POST /v1/jobs`: objective, search space, fine-tuning, budget (see the example).
3. Poll `GET /v1/jobs/{id}`; `GET /v1/jobs/{id}/pareto` (JSON), `/pareto.svg` or `/pareto.png`
   (picture), `/report` (an HTML page: interactive front, trials, reasons); the job's `links`
   name them all.
4. `GET /v1/trials/{id}/checkpoint`: the packed checkpoint, loadable without pickle.
5. `GET /v1/jobs/{id}/events`: Server-Sent Events as trials start, progress and finish.
"""

Hook = Callable[[], None]


def create_app(
    settings: Settings,
    *,
    dispatcher: Dispatcher,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
) -> FastAPI:
    """The API for `settings`, sending follow-up work through `dispatcher`. `on_startup` hooks
    run after the database is ready, in order; `on_shutdown` hooks run in order at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        prepare_database(settings.database_url, auto_upgrade=settings.is_sqlite)
        app.state.settings = settings
        app.state.store = ArtifactStore(settings.artifact_root)
        app.state.dispatcher = dispatcher
        for hook in on_startup:
            hook()
        try:
            yield
        finally:
            for hook in on_shutdown:
                hook()

    # Swagger UI and ReDoc from the fastapi-offline package's own copies: no CDN at run time
    app = FastAPIOffline(
        docs_url="/docs",
        redoc_url="/redoc",
        title="autocompress",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = observability.metrics_registry(settings)
    install_error_handlers(app)
    install_openapi(app)  # documents ErrorBody and every error status of each route
    for module in (models, datasets, jobs, trials, events, report):
        app.include_router(module.router, dependencies=[Depends(require_api_key)])
    app.include_router(report.static_router)  # plotly.js, public like /docs' assets
    app.include_router(observability.router)  # /metrics, /readyz: for probes and scrapers

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Liveness: the server answers and says which mode it runs in."""
        return {"status": "ok", "mode": "embedded" if settings.embedded else "distributed"}

    return app
