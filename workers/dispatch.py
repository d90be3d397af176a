"""Enqueueing follow-up work: Celery messages (distributed) or in-process threads (embedded).

Messages are only hints (the rows are the truth), so sending one twice does no harm. Callers
send only after the transaction that wrote the rows has committed.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.settings import Settings

log = logging.getLogger(__name__)

ADVANCE_JOB = "autocompress.advance_job"
EVALUATE_TRIAL = "autocompress.evaluate_trial"
QUEUE = "autocompress"


class Dispatcher(Protocol):
    def advance_job(self, job_id: int) -> None: ...

    def evaluate_trial(self, trial_id: int, attempt: int) -> None: ...


class CeleryDispatcher:
    """Sends JSON task messages to the broker; any `autocompress worker` picks them up."""

    def __init__(self, settings: Settings) -> None:
        from workers.celery_app import make_celery

        self.app = make_celery(settings)

    def advance_job(self, job_id: int) -> None:
        self.app.send_task(ADVANCE_JOB, args=[job_id], queue=QUEUE)

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        self.app.send_task(EVALUATE_TRIAL, args=[trial_id, attempt], queue=QUEUE)


class LocalDispatcher:
    """Runs the same work in threads of this process: trials on a pool, job advancing on one thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._trials = ThreadPoolExecutor(max(1, settings.embedded_workers), "trial")
        self._control = ThreadPoolExecutor(1, "advance")
        self._closed = threading.Event()

    def advance_job(self, job_id: int) -> None:
        from workers import jobs

        self._submit(self._control, jobs.advance_job, self.settings, self, job_id)

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        from workers import jobs

        self._submit(self._trials, jobs.evaluate_trial, self.settings, self, trial_id, attempt)

    def _submit(self, pool: ThreadPoolExecutor, fn, *args) -> None:  # noqa: ANN001
        if self._closed.is_set():
            return

        def run() -> None:
            try:
                fn(*args)
            except Exception:  # a crash of one task must not kill the pool; the sweeper retries
                log.exception("embedded task %s%s failed", fn.__name__, args[2:])

        pool.submit(run)

    def shutdown(self) -> None:
        self._closed.set()
        self._control.shutdown(wait=False, cancel_futures=True)
        self._trials.shutdown(wait=False, cancel_futures=True)


def make_dispatcher(settings: Settings) -> Dispatcher:
    """Celery when a broker is configured, in-process threads otherwise."""
    return LocalDispatcher(settings) if settings.embedded else CeleryDispatcher(settings)
