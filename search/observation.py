"""The trials a search talks about: a finished one (:class:`Observation`) and a proposed one
(:class:`Proposal`).

Plain data, shared by the optimiser (:mod:`.optimizer`), the Pareto and best-trial helpers
(:mod:`.pareto`) and the stopping rules (:mod:`.stopping`); it imports only :mod:`.space`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .space import Candidate

__all__ = ["Observation", "Proposal", "full_fidelity", "is_full_fidelity"]


@dataclass
class Observation:
    """A finished trial: its candidate, its metrics (None when the trial failed) and its
    ``fidelity``: 1.0 for a full-fidelity result (the whole fine-tune), less for a shorter one
    (a rung of a multi-fidelity search). Only full-fidelity results are ever a front point,
    the best trial or the model's data (:func:`is_full_fidelity`)."""

    candidate: Candidate
    metrics: dict[str, float] | None
    fidelity: float = 1.0


def is_full_fidelity(observation: Observation) -> bool:
    """Whether ``observation`` is a full-fidelity result (``fidelity >= 1``)."""
    return observation.fidelity >= 1.0


def full_fidelity(history: Sequence[Observation]) -> list[int]:
    """Indices of the full-fidelity observations of ``history``, ascending."""
    return [i for i, obs in enumerate(history) if is_full_fidelity(obs)]


@dataclass
class Proposal:
    """A proposed candidate and why: ``reason`` holds ``method`` (``"sobol"``, ``"LogCEI"``,
    ``"LogEI"``, ``"qLogNEI"``, ``"qLogEHVI"``, ``"qLogNEHVI"``, ``"level-set"``,
    ``"random-fallback"``), ``acquisition_value``, ``skipped_within_noise`` (method ``"bo"``
    with ``skip_within_noise``: 1 if the acquisition's optimum was within the noise of a
    finished, pending or batch point and the next best was taken), ``predicted`` (posterior
    ``{metric: {"mean", "std"}}`` in the metric's units; for a warped metric the mean is the
    posterior median and the std half the image of mean +- one std), ``n_observations``
    and, for a fallback, ``error``."""

    candidate: Candidate
    reason: dict[str, Any]
