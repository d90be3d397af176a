"""The Celery app and its tasks, for the distributed mode (`autocompress worker`).

JSON messages only, late acknowledgement, prefetch of one, a broker visibility timeout above
the hard time limit. The tasks are thin wrappers around `workers.jobs`; a sweeper thread in
the worker's main process re-queues trials of workers that died.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from service.settings import Settings, get_settings
from workers.dispatch import ADVANCE_JOB, EVALUATE_TRIAL, QUEUE

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from the settings (the broker is `AUTOCOMPRESS_BROKER_URL`)."""
    app = Celery("autocompress", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 60),
        broker_transport_options={"visibility_timeout": settings.task_time_limit + 3600},
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery(get_settings())
_dispatcher = None


def _get_dispatcher():  # noqa: ANN202
    global _dispatcher
    if _dispatcher is None:
        from workers.dispatch import CeleryDispatcher

        _dispatcher = CeleryDispatcher(get_settings())
    return _dispatcher


@app.task(name=ADVANCE_JOB)
def advance_job_task(job_id: int) -> None:
    from workers import jobs

    jobs.advance_job(get_settings(), _get_dispatcher(), job_id)


@app.task(name=EVALUATE_TRIAL)
def evaluate_trial_task(trial_id: int, attempt: int) -> None:
    from workers import jobs

    jobs.evaluate_trial(get_settings(), _get_dispatcher(), trial_id, attempt)


@signals.worker_ready.connect
def _start_sweeper(**_: object) -> None:
    """The sweeper runs in the worker's main process, which never computes (and never uses CUDA)."""
    from service.db import check_schema
    from workers.jobs import Sweeper

    settings = get_settings()
    check_schema(settings.database_url)
    Sweeper(settings, _get_dispatcher()).start()
