"""Monotone output transforms: the scale each metric is modelled in.

A stationary GP on raw outputs fits compression landscapes badly: the compression ratio grows
like ``1 / (1 - sparsity)`` (2 to 100+ over a typical range) and the accuracy drop is flat,
then steep. So before fitting, each modelled metric is warped by a strictly increasing map:

* ``log``: an objective metric that is positive by nature (:data:`POSITIVE_METRICS`, those
  marked ``positive`` in :data:`.metric_table.METRIC_TABLE`) and positive in every
  observation, when its bounds (if any) are positive too. The argmax, the feasible set and
  the Pareto front are unchanged.
* ``bilog`` around the bound: a metric that is only constrained, by a single bound ``b``,
  becomes ``sign(y - b) * log(1 + |y - b| / scale)``: linear within ``scale`` of the bound,
  logarithmic beyond, so a few far-off points (a collapsed model's 50 % drop) no longer
  flatten the model where the feasibility boundary is. ``scale`` is ``|b|`` (the precision a
  threshold implies), or the median distance of the observations to the bound when ``b = 0``.
* ``identity`` otherwise.

Constraint bounds are warped by the same maps (:func:`warped_bounds`), and
:meth:`OutputWarp.untransform` brings predictions back to the metric's units. A measurement's
variance is carried into modelled units by the delta method (:meth:`OutputWarp.derivative`):
``var_z = var_y * (dz/dy)**2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .metric_table import METRIC_TABLE
from .objective import Objective

__all__ = ["POSITIVE_METRICS", "OutputWarp", "choose_warps", "warped_bounds"]

#: Metrics that are positive by nature and vary over orders of magnitude.
POSITIVE_METRICS = frozenset(name for name, m in METRIC_TABLE.items() if m.positive)


@dataclass(frozen=True)
class OutputWarp:
    """A strictly increasing map of one output column (see the module docstring)."""

    kind: Literal["identity", "log", "bilog"] = "identity"
    center: float = 0.0
    scale: float = 1.0

    def transform(self, y: Tensor) -> Tensor:
        """Metric units to modelled units."""
        if self.kind == "log":
            return y.log()
        if self.kind == "bilog":
            d = (y - self.center) / self.scale
            return d.sign() * d.abs().log1p()
        return y

    def untransform(self, z: Tensor) -> Tensor:
        """Modelled units back to metric units."""
        if self.kind == "log":
            return z.exp()
        if self.kind == "bilog":
            return self.center + self.scale * z.sign() * z.abs().expm1()
        return z

    def derivative(self, y: Tensor) -> Tensor:
        """``dz/dy`` at ``y`` (metric units): how a small spread, such as a measurement's
        standard error, is scaled into modelled units (the delta method)."""
        if self.kind == "log":
            return 1.0 / y
        if self.kind == "bilog":
            return 1.0 / (self.scale * (1.0 + ((y - self.center) / self.scale).abs()))
        return torch.ones_like(y)

    def bound(self, value: float) -> float:
        """A constraint bound in modelled units."""
        return float(self.transform(torch.tensor(value, dtype=torch.double)))

    def describe(self, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """A modelled Gaussian ``(mean, std)`` in metric units: the image of the mean (the
        median of the warped distribution) and half the image of ``mean +- std``."""
        if self.kind == "identity":
            return mean, std
        return self.untransform(mean), 0.5 * (
            self.untransform(mean + std) - self.untransform(mean - std)
        )


def _bounds_of(objective: Objective, name: str) -> list[float]:
    return [
        b
        for c in objective.constraints
        if c.metric == name
        for b in (c.min, c.max)
        if b is not None
    ]


def choose_warps(objective: Objective, names: Sequence[str], Y: Tensor) -> list[OutputWarp]:
    """One warp per column of ``Y`` (``n x m`` finite values of the metrics ``names``)."""
    objective_metrics = set(objective.metric_names)
    warps = []
    for j, name in enumerate(names):
        y = Y[:, j]
        bounds = _bounds_of(objective, name)
        if name in objective_metrics:
            positive = name in POSITIVE_METRICS and bool((y > 0).all())
            warps.append(
                OutputWarp("log" if positive and min(bounds, default=1) > 0 else "identity")
            )
        elif len(bounds) == 1:
            bound = bounds[0]
            scale = abs(bound) if bound != 0 else float((y - bound).abs().median())
            ok = math.isfinite(scale) and scale > 0
            warps.append(OutputWarp("bilog", bound, scale) if ok else OutputWarp())
        else:
            warps.append(OutputWarp())
    return warps


def warped_bounds(
    objective: Objective, names: Sequence[str], warps: Sequence[OutputWarp]
) -> list[tuple[int, float, int]]:
    """``(column, bound, sign)`` per constraint bound in modelled units: the bound holds where
    ``sign * (z - bound) <= 0``."""
    bounds = []
    for c in objective.constraints:
        j = names.index(c.metric)
        if c.max is not None:
            bounds.append((j, warps[j].bound(c.max), 1))
        if c.min is not None:
            bounds.append((j, warps[j].bound(c.min), -1))
    return bounds
