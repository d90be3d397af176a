"""The trials a search talks about: a finished one (:class:`Observation`) and a proposed one
(:class:`Proposal`).

Plain data, shared by the optimiser (:mod:`.optimizer`), the Pareto and best-trial helpers
(:mod:`.pareto`) and the stopping rules (:mod:`.stopping`); it imports only :mod:`.space`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .space import Candidate

__all__ = ["Observation", "Proposal"]


@dataclass
class Observation:
    """A finished trial: its candidate and its metrics (None when the trial failed)."""

    candidate: Candidate
    metrics: dict[str, float] | None


@dataclass
class Proposal:
    """A proposed candidate and why: ``reason`` holds ``method`` (``"sobol"``, ``"LogCEI"``,
    ``"LogEI"``, ``"qLogNEI"``, ``"qLogEHVI"``, ``"qLogNEHVI"``, ``"level-set"``,
    ``"random-fallback"``), ``acquisition_value``, ``predicted`` (posterior
    ``{metric: {"mean", "std"}}`` in the metric's units; for a warped metric the mean is the
    posterior median and the std half the image of mean +- one std), ``n_observations``
    and, for a fallback, ``error``."""

    candidate: Candidate
    reason: dict[str, Any]
