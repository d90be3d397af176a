"""The sweeper: makes the database the truth again after lost workers, messages or files.

It runs at start-up and every `sweep_seconds`, in a daemon thread of every worker's main process
and of the embedded API process, and each pass is idempotent (a duplicate message claims
nothing):

- a running trial whose lease expired (its worker died) goes back to `queued`, attempt + 1;
- a queued trial whose message went out more than `requeue_grace_seconds` ago and that no
  worker claimed (the broker lost it, or it was never sent) is sent again;
- a job with nothing in flight, or running with a free slot, is advanced (a lost follow-up);
- files of the artifact store that no row names, older than `orphan_grace_seconds`, are removed.

The row updates and queries are in `service.core.repository`; this module sends the follow-up
messages after the commit.
"""

from __future__ import annotations

import logging
import threading

from service.core import repository
from service.core.db import session_scope
from service.core.dispatch import Dispatcher, send_after_commit
from service.core.settings import Settings
from service.core.storage import ArtifactStore

log = logging.getLogger(__name__)


def sweep(settings: Settings, dispatcher: Dispatcher, *, startup: bool = False) -> dict[str, int]:
    """Re-queue trials whose lease expired, re-send queued trials nobody claimed, advance jobs
    with a free slot, remove orphaned files; at start-up re-send every queued trial and
    advance every unfinished job."""
    with session_scope(settings.database_url) as session:
        swept = repository.sweep_expired_leases(session, settings.max_attempts)
        requeue = list(swept.requeued)
        if startup:  # whatever was in flight before: send it all again
            resent = repository.queued_trials(session)
            repository.mark_sent(session, [trial_id for trial_id, _ in resent])
            due = repository.unfinished_jobs(session)
        else:
            resent = repository.unclaimed_trials(session, settings.requeue_grace_seconds)
            due = repository.jobs_to_advance(session, settings.max_inflight_per_job)
        requeue += resent
        advance = swept.failed_jobs | set(due)
    for trial_id, attempt in dict.fromkeys(requeue):  # after the commit: messages are hints
        send_after_commit(dispatcher.evaluate_trial, trial_id, attempt)
    for job_id in sorted(advance):
        send_after_commit(dispatcher.advance_job, job_id)
    removed = remove_orphaned_files(settings)
    return {
        "requeued": len(swept.requeued),
        "failed": swept.failed,
        "resent": len(resent),
        "orphans_removed": removed,
    }


def remove_orphaned_files(settings: Settings) -> int:
    """Delete artifact files with no row, older than `orphan_grace_seconds`; how many."""
    store = ArtifactStore(settings.artifact_root)
    with session_scope(settings.database_url) as session:
        orphans = repository.orphaned_files(session, store, settings.orphan_grace_seconds)
    for path in orphans:
        log.warning("removing orphaned artifact file %s", path)
        path.unlink(missing_ok=True)
    return len(orphans)


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
                if any(counts.values()):
                    log.warning("sweeper: %s", counts)
                startup = False
            except Exception:
                log.warning("sweep failed", exc_info=True)
            if self._stopped.wait(self.settings.sweep_seconds):
                return

    def stop(self) -> None:
        self._stopped.set()
