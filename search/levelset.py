"""Condensa's two-phase search for a single strength parameter, on a dense 1-D grid.

Phase 1 (level set): locate the largest strength that meets the constraints. The constraint
metrics' GPs give, at each grid point, the probability that every bound holds; the next point
maximises the *straddle* score ``1.96 sigma - |mu - bound|`` (Bryan et al., 2005), largest
where the boundary is both near and uncertain. Pending and just chosen points are added to
the GPs as fantasies (their posterior mean), so a batch spreads along the boundary.

Phase 2 (objective): the acquisition is maximised over the grid points up to the last one
that may still be feasible (probability of feasibility at least ``MAY_BE_FEASIBLE``).

Everything works on the unit interval of the encoded parameter; the grid is snapped to the
values that will actually be evaluated (integers are rounded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.models import ModelListGP
from torch import Tensor
from torch.distributions import Normal

from .space import SearchSpace

#: ``(output column, bound, sign)`` per constraint bound in modelled units, as from
#: :func:`.warp.warped_bounds`: the bound holds where ``sign * (z - bound) <= 0``.
Bounds = Sequence[tuple[int, float, int]]

__all__ = ["feasibility", "level_set_points", "objective_points", "unit_grid"]

GRID_POINTS = 1001
#: grid points whose probability of feasibility is between these are "not yet classified"
UNRESOLVED = (0.05, 0.95)
MAY_BE_FEASIBLE = 0.05
_Z = 1.96


def unit_grid(space: SearchSpace) -> Tensor:
    """``g x 1`` distinct encoded values of the single parameter, ascending."""
    grid = space.snap(torch.linspace(0, 1, GRID_POINTS, dtype=torch.double).unsqueeze(-1))
    return torch.unique(grid.reshape(-1)).unsqueeze(-1)


def _posterior(model: ModelListGP, X: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        posterior = model.posterior(X)
        return posterior.mean, posterior.variance.clamp_min(1e-12).sqrt()


def feasibility(model: ModelListGP, X: Tensor, bounds: Bounds) -> Tensor:
    """Probability that every bound holds at each row of ``X`` (outputs independent)."""
    mean, std = _posterior(model, X)
    normal = Normal(torch.zeros((), dtype=X.dtype), torch.ones((), dtype=X.dtype))
    p = torch.ones(X.shape[0], dtype=X.dtype)
    for j, bound, sign in bounds:
        p = p * normal.cdf(sign * (bound - mean[:, j]) / std[:, j])
    return p


def _unclassified(p: Tensor) -> Tensor:
    return (p > UNRESOLVED[0]) & (p < UNRESOLVED[1])


def resolved(p: Tensor, grid: Tensor, tolerance: float) -> bool:
    """Whether the grid points not yet classified span less than ``tolerance``."""
    unclassified = grid[_unclassified(p)]
    return unclassified.numel() == 0 or float(unclassified.max() - unclassified.min()) < tolerance


def _straddle(model: ModelListGP, grid: Tensor, bounds: Bounds, scales: Tensor) -> Tensor:
    mean, std = _posterior(model, grid)
    scores = [(_Z * std[:, j] - (mean[:, j] - bound).abs()) / scales[j] for j, bound, _ in bounds]
    return torch.stack(scores).amax(dim=0)


def level_set_points(
    model: ModelListGP,
    grid: Tensor,
    bounds: Bounds,
    scales: Tensor,
    X_pending: Tensor | None,
    n: int,
    tolerance: float,
) -> list[tuple[Tensor, float]]:
    """``n`` points (``1 x 1`` each) of highest straddle score and their scores; ``scales``
    are the outputs' spreads, so that scores of different metrics compare.

    Pending and chosen points are fantasies, and the grid points closer to them than a
    share of the unclassified interval (at least ``tolerance``) are left out: the straddle
    score peaks where the mean crosses the bound, so fantasies alone would repeat a point.
    """
    unclassified = grid[_unclassified(feasibility(model, grid, bounds))]
    width = float(unclassified.max() - unclassified.min()) if unclassified.numel() else 0.0
    n_points = n + (0 if X_pending is None else X_pending.shape[0])
    radius = max(tolerance, 0.5 * width / n_points)
    chosen: list[tuple[Tensor, float]] = []
    fantasies = X_pending
    for _ in range(n):
        current = model if fantasies is None else _with_fantasies(model, fantasies)
        scores = _straddle(current, grid, bounds, scales)
        if fantasies is not None:
            near = (grid - fantasies.reshape(1, -1)).abs().amin(dim=-1) < radius
            if not bool(near.all()):
                scores = scores.masked_fill(near, -math.inf)
        best = int(scores.argmax())
        x = grid[best : best + 1]
        chosen.append((x, float(scores[best])))
        fantasies = x if fantasies is None else torch.cat([fantasies, x])
    return chosen


def _with_fantasies(model: ModelListGP, X: Tensor) -> ModelListGP:
    """The model conditioned on its own posterior mean at ``X`` (uncertainty shrinks there)."""
    mean, _ = _posterior(model, X)
    return ModelListGP(
        *[
            sub.condition_on_observations(X, mean[:, j : j + 1])
            for j, sub in enumerate(model.models)
        ]
    )


def objective_points(
    acqf: AcquisitionFunction, grid: Tensor, feasible_probability: Tensor, n: int
) -> list[tuple[Tensor, float]]:
    """``n`` points of highest acquisition among the grid points up to the last one that may
    be feasible, chosen sequentially (each is pending for the next)."""
    may = torch.nonzero(feasible_probability >= MAY_BE_FEASIBLE).reshape(-1)
    upper = int(may.max()) if may.numel() else 0
    candidates = grid[: upper + 1]
    base_pending = getattr(acqf, "X_pending", None)
    chosen: list[tuple[Tensor, float]] = []
    for i in range(n):
        with torch.no_grad():
            values = acqf(candidates.unsqueeze(-2))
        best = int(values.argmax())
        chosen.append((candidates[best : best + 1], float(values[best])))
        if i + 1 < n:
            batch = torch.cat([x for x, _ in chosen])
            acqf.set_X_pending(batch if base_pending is None else torch.cat([base_pending, batch]))
    return chosen
