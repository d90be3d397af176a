"""The Celery app and its tasks, for the distributed mode (`autocompress worker`).

The configuration is `workers.celery_config`; the tasks are thin wrappers around
`workers.jobs`, and follow-up work goes out through a `CeleryDispatcher` on this same app. A
sweeper thread in the worker's main process re-queues trials of workers that died. The
artifact root is allowed for ``export:`` programs, as in the server (`service.main`).
"""

from __future__ import annotations

from celery import signals

from operators.export import allow_root
from service.core.db import check_schema
from service.core.logs import configure_logging
from service.core.settings import get_settings
from workers import jobs
from workers.celery_config import ADVANCE_JOB, EVALUATE_TRIAL, make_celery
from workers.dispatch import CeleryDispatcher
from workers.sweeper import Sweeper

app = make_celery(get_settings())
allow_root(get_settings().artifact_root)  # export: programs are stored there (routes/models.py)
dispatcher = CeleryDispatcher(app)


@app.task(name=ADVANCE_JOB)
def advance_job_task(job_id: int) -> None:
    jobs.advance_job(get_settings(), dispatcher, job_id)


@app.task(name=EVALUATE_TRIAL)
def evaluate_trial_task(trial_id: int, attempt: int) -> None:
    jobs.evaluate_trial(get_settings(), dispatcher, trial_id, attempt)


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    """Celery leaves logging to us when this signal has a receiver: plain or JSON lines."""
    configure_logging(get_settings(), loglevel or "INFO")


@signals.worker_ready.connect
def _start_sweeper(**_: object) -> None:
    """The sweeper runs in the worker's main process, which never computes (and never uses CUDA)."""
    settings = get_settings()
    check_schema(settings.database_url)
    Sweeper(settings, dispatcher).start()
