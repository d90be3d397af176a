"""Pareto fronts, hypervolume and the best feasible trial of a history.

Points are metric dicts (``{"accuracy": 0.98, "size_bytes": 1.2e5}``); goals are
``(metric, "max" | "min")`` pairs. Points with a missing or non-finite goal metric
(:func:`.metric_table.finite_values`) are never on a front and add no hypervolume. The
history helpers (:func:`feasible_front`, :func:`best_feasible`) take lists of
:class:`.observation.Observation` and answer indices into them; they count full-fidelity
observations only (``fidelity >= 1``): a shorter fine-tune's result is never a front point
nor the best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from botorch.utils.multi_objective.hypervolume import Hypervolume
from botorch.utils.multi_objective.pareto import is_non_dominated

from .metric_table import Goal, finite_values
from .objective import Objective
from .observation import Observation, full_fidelity

__all__ = ["best_feasible", "feasible_front", "hypervolume", "infer_reference", "pareto_front"]


def _signed(
    point: Mapping[str, Any] | None, goals: Sequence[tuple[str, Goal]]
) -> list[float] | None:
    """The point's goal values turned into maximisation, or None if any is unusable."""
    values = finite_values(point, [name for name, _ in goals])
    if values is None:
        return None
    return [v if goal == "max" else -v for v, (_, goal) in zip(values, goals, strict=True)]


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def pareto_front(
    points: Sequence[Mapping[str, Any] | None], goals: Sequence[tuple[str, Goal]]
) -> list[int]:
    """Indices (ascending) of the non-dominated points; equal points are all kept."""
    signed = [(i, s) for i, p in enumerate(points) if (s := _signed(p, goals)) is not None]
    return [i for i, a in signed if not any(_dominates(b, a) for _, b in signed)]


def hypervolume(
    points: Sequence[Mapping[str, Any] | None],
    goals: Sequence[tuple[str, Goal]],
    reference: Mapping[str, float],
) -> float:
    """Volume dominated by ``points`` and dominating ``reference`` (in the goals' units).

    Exact: a sweep for one or two goals, BoTorch's ``Hypervolume`` beyond.
    """
    ref = _signed(reference, goals)
    if ref is None:
        raise ValueError(f"reference must give a finite value for each of {[g for g, _ in goals]}")
    rows = [s for p in points if (s := _signed(p, goals)) is not None]
    rows = [s for s in rows if all(x > r for x, r in zip(s, ref, strict=True))]
    if not rows:
        return 0.0
    if len(goals) == 1:
        return max(s[0] for s in rows) - ref[0]
    if len(goals) == 2:
        volume, best_y = 0.0, ref[1]
        for x, y in sorted(rows, key=lambda s: (-s[0], -s[1])):
            if y > best_y:
                volume += (x - ref[0]) * (y - best_y)
                best_y = y
        return volume
    Y = torch.tensor(rows, dtype=torch.double)
    hv = Hypervolume(ref_point=torch.tensor(ref, dtype=torch.double))
    return float(hv.compute(Y[is_non_dominated(Y)]))


def infer_reference(
    points: Sequence[Mapping[str, Any] | None],
    goals: Sequence[tuple[str, Goal]],
    margin: float = 0.1,
) -> dict[str, float] | None:
    """A reference point: the nadir of the points minus ``margin`` of their range per goal
    (in the worse direction). None when no point has finite values for every goal."""
    rows = [s for p in points if (s := _signed(p, goals)) is not None]
    if not rows:
        return None
    reference = {}
    for k, (name, goal) in enumerate(goals):
        column = [s[k] for s in rows]
        span = max(column) - min(column)
        if span <= 0:
            span = max(abs(min(column)), 1.0)
        worst = min(column) - margin * span
        reference[name] = worst if goal == "max" else -worst
    return reference


def feasible_front(
    history: Sequence[Observation],
    objective: Objective,
    goals: Sequence[tuple[str, Goal]] | None = None,
) -> list[int]:
    """Indices (ascending) of the feasible full-fidelity observations that are non-dominated
    on ``goals`` (default: the objective's metrics)."""
    goals = objective.metrics if goals is None else goals
    feasible = [i for i in full_fidelity(history) if objective.is_feasible(history[i].metrics)]
    front = pareto_front([history[i].metrics for i in feasible], goals)
    return [feasible[j] for j in front]


def best_feasible(history: Sequence[Observation], objective: Objective) -> int | None:
    """Index of the best feasible full-fidelity observation (first one on ties), None if
    none is.

    For a Pareto objective, "best" is the feasible front point best on the first metric.
    """
    name, goal = objective.metrics[0]
    sign = 1.0 if goal == "max" else -1.0
    front = feasible_front(history, objective)
    return max(front, key=lambda i: sign * float(history[i].metrics[name]), default=None)
