"""A job's budget as both the workers and the API read it: the successive-halving rungs of
``budget.rungs`` and the fine-tuning epochs spent (what ``budget.max_epochs`` counts).

The workers spend the budget (:mod:`workers.jobs`); the API estimates what is left of it
(``eta_seconds``, :mod:`service.api.presenters`): one definition for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.core.db import Job, Trial

__all__ = ["Rungs", "epochs_spent"]


@dataclass(frozen=True)
class Rungs:
    """Successive halving (``budget.rungs``): rung k fine-tunes ``fractions[k]`` of a trial's
    epochs; of every ``eta`` trials finished at a rung, the best is continued at the next."""

    fractions: tuple[float, ...]
    eta: int

    @classmethod
    def of(cls, job: Job) -> Rungs:
        spec = job.spec["budget"].get("rungs")
        if not spec:
            return cls((1.0,), 1)
        fraction, eta, fractions = float(spec["min_fraction"]), int(spec["eta"]), []
        while fraction < 1.0 - 1e-9:
            fractions.append(fraction)
            fraction *= eta
        return cls((*fractions, 1.0), eta)

    @property
    def top(self) -> int:
        return len(self.fractions) - 1


def epochs_spent(trials: Sequence[Trial]) -> float:
    """Fine-tuning epochs of the job's trials, run or under way (a cancelled one's count no
    more than what it had done)."""
    return sum(
        (t.epochs or 0.0) * (t.progress if t.state == "cancelled" else 1.0) for t in trials
    )
