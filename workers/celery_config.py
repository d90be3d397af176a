"""The Celery configuration shared by the senders (API, workers) and `autocompress worker`.

JSON messages only, late acknowledgement, prefetch of one, a broker visibility timeout above
the hard time limit. Importing this module has no side effect; the worker's app with its tasks
is `workers.celery_app`.
"""

from __future__ import annotations

from celery import Celery

from service.core.settings import Settings

ADVANCE_JOB = "autocompress.advance_job"
EVALUATE_TRIAL = "autocompress.evaluate_trial"
QUEUE = "autocompress"


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
