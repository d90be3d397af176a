"""The dispatcher protocol: how the API and the workers ask for follow-up work.

The concrete dispatchers (Celery messages, in-process threads) live in `workers.dispatch`;
the composition root (`service.main`) picks one and hands it to the API. Messages are only
hints (the rows are the truth), so sending one twice does no harm; callers send only after
the transaction that wrote the rows has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class DispatchUnavailable(RuntimeError):
    """The message could not be sent (the broker is unreachable). The rows written before are
    kept; the API answers 503 with `Retry-After`."""


class Dispatcher(Protocol):
    def advance_job(self, job_id: int) -> None:
        """Ask for `workers.jobs.advance_job(job_id)` to run."""

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        """Ask for `workers.jobs.evaluate_trial(trial_id, attempt)` to run."""


def send_after_commit(send: Callable[..., None], *args: int) -> bool:
    """Call a dispatcher method for rows already committed; a `DispatchUnavailable` (broker
    down) is logged and left to the sweeper, which re-sends from the rows (a queued trial left
    unclaimed past `requeue_grace_seconds`, a job with a free slot). False: not sent."""
    try:
        send(*args)
    except DispatchUnavailable as exc:
        log.warning("%s%s not sent, left to the sweeper: %s", send.__name__, args, exc)
        return False
    return True
