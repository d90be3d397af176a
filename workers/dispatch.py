"""The concrete dispatchers: Celery messages (distributed) or in-process threads (embedded).

Both implement `service.core.dispatch.Dispatcher`; the composition root (`service.main`) picks
one. Messages are only hints (the rows are the truth), so sending one twice does no harm. Callers send only after the transaction that wrote the rows has committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from service.core.dispatch import DispatchUnavailable
from service.core.settings import Settings
from workers import jobs
from workers.celery_config import ADVANCE_JOB, EVALUATE_TRIAL, QUEUE, make_celery

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """Sends JSON task messages to the broker; any `autocompress worker` picks them up."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def from_settings(cls, settings: Settings) -> CeleryDispatcher:
        return cls(make_celery(settings))

    def advance_job(self, job_id: int) -> None:
        self._send(ADVANCE_JOB, [job_id])

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        self._send(EVALUATE_TRIAL, [trial_id, attempt])

    def _send(self, task: str, args: list[int]) -> None:
        """Send one message; an unreachable broker is `DispatchUnavailable` (the API's 503)."""
        try:
            self.app.send_task(task, args=args, queue=QUEUE)
        except (BrokerError, OSError) as exc:
            raise DispatchUnavailable(f"the message broker is unreachable: {exc}") from exc


class LocalDispatcher:
    """Runs the same work in threads of this process: trials on a pool, job advancing on one
    thread. Work is accepted between `start()` and `shutdown()`; what arrives outside is
    dropped (the rows keep it, and the sweeper re-sends it at the next start-up)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._trials: ThreadPoolExecutor | None = None
        self._control: ThreadPoolExecutor | None = None

    def start(self) -> None:
        with self._lock:
            if self._trials is None:
                self._trials = ThreadPoolExecutor(max(1, self.settings.embedded_workers), "trial")
                self._control = ThreadPoolExecutor(1, "advance")

    def advance_job(self, job_id: int) -> None:
        self._submit("_control", jobs.advance_job, job_id)

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        self._submit("_trials", jobs.evaluate_trial, trial_id, attempt)

    def _submit(self, pool_name: str, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(self.settings, self, *args)
            except Exception:  # a crash of one task must not kill the pool; the sweeper retries
                log.exception("embedded task %s%s failed", fn.__name__, args)

        with self._lock:
            pool = getattr(self, pool_name)
            if pool is not None:
                pool.submit(run)

    def shutdown(self) -> None:
        with self._lock:
            pools, self._trials, self._control = (self._control, self._trials), None, None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
