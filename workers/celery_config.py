"""The Celery configuration shared by the senders (API, workers) and `autocompress worker`.

JSON messages only, late acknowledgement, prefetch of one. The broker visibility timeout is
short (`visibility_timeout_seconds`, minutes, not the trial's hours): a message whose worker
died unacknowledged comes back soon, and one redelivered while its trial still runs claims
nothing (the compare-and-set on the row), so the lease on the database, not the broker,
decides who runs a trial. Sending gives up after about a second when the broker is down (the
sweeper re-sends from the rows). Importing this module has no side effect; the worker's app
with its tasks is `workers.celery_app`.
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_timeout=2,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.3,
            "interval_max": 0.5,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
    )
    return app
