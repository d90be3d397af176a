"""The objective of a job: which metric(s) to optimise and which constraints must hold.

Parsed from the job's ``objective`` JSON:

* ``{"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}``
* ``{"minimize": "latency_ms", "constraints": [...]}``
* ``{"pareto": [{"metric": "accuracy", "goal": "max"}, {"metric": "size_bytes", "goal": "min"}],
  "constraints": [...]}``

Every trial records every metric of :data:`.metric_table.METRICS`; the objective picks among
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .metric_table import METRICS, Goal, is_finite

__all__ = ["Constraint", "Objective", "ObjectiveError"]


class ObjectiveError(ValueError):
    """An invalid ``objective``; ``field`` names the JSON path at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Constraint:
    """``min <= metrics[metric] <= max``; either bound may be None (not both)."""

    metric: str
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        """Whether a finite ``value`` satisfies the bounds (NaN/inf never do)."""
        if not is_finite(value):
            return False
        value = float(value)
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class Objective:
    """``kind`` is ``"single"`` (one entry in ``metrics``) or ``"pareto"`` (two or more);
    ``metrics`` lists ``(metric, goal)`` pairs with goal ``"max"`` or ``"min"``."""

    kind: Literal["single", "pareto"]
    metrics: list[tuple[str, Goal]]
    constraints: list[Constraint] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Objective:
        """Parse and validate a job's ``objective`` JSON.

        Raises:
            ObjectiveError: naming the JSON path at fault (and listing the allowed metric
                names when a metric is unknown).
        """
        root = "objective"
        if not isinstance(spec, Mapping):
            raise ObjectiveError(root, "must be an object with 'maximize', 'minimize' or 'pareto'")
        allowed = {"maximize", "minimize", "pareto", "constraints"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ObjectiveError(f"{root}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")
        modes = [key for key in ("maximize", "minimize", "pareto") if key in spec]
        if len(modes) != 1:
            raise ObjectiveError(root, "give exactly one of 'maximize', 'minimize', 'pareto'")
        mode = modes[0]
        if mode == "pareto":
            kind: Literal["single", "pareto"] = "pareto"
            metrics = _parse_pareto(spec["pareto"], f"{root}.pareto")
        else:
            kind = "single"
            metrics = [
                (_metric(spec[mode], f"{root}.{mode}"), "max" if mode == "maximize" else "min")
            ]
        raw = spec.get("constraints", [])
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ObjectiveError(f"{root}.constraints", "must be a list")
        constraints = [_parse_constraint(c, f"{root}.constraints[{i}]") for i, c in enumerate(raw)]
        return cls(kind=kind, metrics=metrics, constraints=constraints)

    def to_spec(self) -> dict[str, Any]:
        """The JSON form accepted by :meth:`from_spec`."""
        spec: dict[str, Any]
        if self.kind == "pareto":
            spec = {"pareto": [{"metric": m, "goal": g} for m, g in self.metrics]}
        else:
            metric, goal = self.metrics[0]
            spec = {"maximize" if goal == "max" else "minimize": metric}
        spec["constraints"] = [
            {
                k: v
                for k, v in (("metric", c.metric), ("min", c.min), ("max", c.max))
                if v is not None
            }
            for c in self.constraints
        ]
        return spec

    @property
    def metric_names(self) -> list[str]:
        """The objective metrics, in order."""
        return [name for name, _ in self.metrics]

    @property
    def modelled_metrics(self) -> list[str]:
        """Objective metrics then constrained metrics, each once: the outputs a model needs."""
        names = self.metric_names
        names += [c.metric for c in self.constraints if c.metric not in names]
        return list(dict.fromkeys(names))

    def is_feasible(self, metrics: Mapping[str, Any] | None) -> bool:
        """Whether a trial's metrics satisfy every constraint and give finite objective values.

        ``None`` (a failed trial), a missing metric or a NaN/inf value is infeasible.
        """
        if metrics is None:
            return False
        if not all(is_finite(metrics.get(name)) for name in self.metric_names):
            return False
        return all(c.holds(metrics.get(c.metric)) for c in self.constraints)


def _metric(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in METRICS:
        raise ObjectiveError(where, f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
    return name


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not is_finite(value):
        raise ObjectiveError(where, "must be a finite number")
    return float(value)


def _parse_pareto(raw: Any, where: str) -> list[tuple[str, Goal]]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ObjectiveError(where, "must list at least two {metric, goal} entries")
    metrics: list[tuple[str, Goal]] = []
    for i, item in enumerate(raw):
        item_where = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ObjectiveError(item_where, "must be an object {metric, goal}")
        unknown = sorted(set(item) - {"metric", "goal"})
        if unknown:
            raise ObjectiveError(
                f"{item_where}.{unknown[0]}", "unknown key; allowed: ['goal', 'metric']"
            )
        name = _metric(item.get("metric"), f"{item_where}.metric")
        goal = item.get("goal")
        if goal not in ("max", "min"):
            raise ObjectiveError(f"{item_where}.goal", "must be 'max' or 'min'")
        if name in (m for m, _ in metrics):
            raise ObjectiveError(f"{item_where}.metric", f"metric {name!r} is listed twice")
        metrics.append((name, goal))
    return metrics


def _parse_constraint(raw: Any, where: str) -> Constraint:
    if not isinstance(raw, Mapping):
        raise ObjectiveError(where, "must be an object {metric, min and/or max}")
    unknown = sorted(set(raw) - {"metric", "min", "max"})
    if unknown:
        raise ObjectiveError(
            f"{where}.{unknown[0]}", "unknown key; allowed: ['max', 'metric', 'min']"
        )
    name = _metric(raw.get("metric"), f"{where}.metric")
    low = _number(raw.get("min"), f"{where}.min")
    high = _number(raw.get("max"), f"{where}.max")
    if low is None and high is None:
        raise ObjectiveError(where, "give 'min', 'max' or both")
    if low is not None and high is not None and low > high:
        raise ObjectiveError(where, "min must be <= max")
    return Constraint(metric=name, min=low, max=high)
