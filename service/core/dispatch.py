"""The dispatcher protocol: how the API and the workers ask for follow-up work.

The concrete dispatchers (Celery messages, in-process threads) live in `workers.dispatch`;
the composition root (`service.main`) picks one and hands it to the API. Messages are only
hints (the rows are the truth), so sending one twice does no harm; callers send only after
the transaction that wrote the rows has committed.
"""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    def advance_job(self, job_id: int) -> None:
        """Ask for `workers.jobs.advance_job(job_id)` to run."""

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        """Ask for `workers.jobs.evaluate_trial(trial_id, attempt)` to run."""
