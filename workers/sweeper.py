"""The sweeper: re-queues trials whose worker died, and nudges jobs that have nothing in flight.

It runs at start-up and every `sweep_seconds`, in a daemon thread of every worker's main process
and of the embedded API process. The row updates are `repository.sweep_expired_leases`; this
module sends the follow-up messages after the commit.
"""

from __future__ import annotations

import logging
import threading

from service.core import repository
from service.core.db import session_scope
from service.core.dispatch import Dispatcher
from service.core.settings import Settings

log = logging.getLogger(__name__)


def sweep(settings: Settings, dispatcher: Dispatcher, *, startup: bool = False) -> dict[str, int]:
    """Re-queue trials whose lease expired; at start-up also re-send queued trials and jobs."""
    with session_scope(settings.database_url) as session:
        swept = repository.sweep_expired_leases(session, settings.max_attempts)
        requeue = list(swept.requeued)
        if startup:
            requeue += repository.queued_trials(session)
        advance = swept.failed_jobs | set(
            repository.unfinished_jobs(session, idle_only=not startup)
        )
    for trial_id, attempt in dict.fromkeys(requeue):  # after the commit: messages are hints
        dispatcher.evaluate_trial(trial_id, attempt)
    for job_id in sorted(advance):
        dispatcher.advance_job(job_id)
    return {"requeued": len(swept.requeued), "failed": swept.failed}


class Sweeper(threading.Thread):
    """Runs `sweep` once at start-up and then every `sweep_seconds`, in a daemon thread."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        super().__init__(daemon=True, name="sweeper")
        self.settings, self.dispatcher = settings, dispatcher
        self._stopped = threading.Event()

    def run(self) -> None:
        startup = True
        while True:
            try:
                counts = sweep(self.settings, self.dispatcher, startup=startup)
                if counts["requeued"] or counts["failed"]:
                    log.warning("sweeper: %s", counts)
                startup = False
            except Exception:
                log.warning("sweep failed", exc_info=True)
            if self._stopped.wait(self.settings.sweep_seconds):
                return

    def stop(self) -> None:
        self._stopped.set()
