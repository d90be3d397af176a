"""Stopping rules: why a job must propose nothing more, as one pure function.

A job stops when its trial budget is spent, its time budget is spent, (when it sets a
``patience``) when the last ``patience`` finished trials brought no improvement, or (when
given its search space and settings) when the search has converged below the noise:

* single objective: the best feasible objective value did not improve by more than
  ``min_improvement`` times its magnitude (``0`` means any strict improvement counts);
* Pareto objective: the hypervolume of the feasible front (reference point inferred from
  every feasible trial, so all prefixes are measured alike) did not grow by more than
  ``min_improvement`` times itself;
* converged (single objective, ``SearchSettings.stop_below_noise``, at least
  ``stop_min_trials`` full-fidelity trials): the best predicted gain of the objective
  (:func:`.optimizer.predicted_gain`: the largest constrained expected improvement over the
  model's candidates) is below the objective's measurement noise (its ``noise_sigmas``
  standard errors: ``"converged: the best predicted gain of accuracy (0.0008) is below its
  measurement noise (0.0012)"``), or for a noiseless objective such as
  ``compression_ratio`` below ``stop_relative_gain`` (1%) of its best value:
  ``"converged: the best predicted gain of compression_ratio (0.21) is below 1% of its best
  (38.2)"``. (The noisy constraints are in the gain already: it is the expected improvement
  times the probability that they hold.)

Only full-fidelity observations (``fidelity >= 1``) count for patience and convergence; the
trial budget counts every trial.

The answer is a sentence for ``job.stop_reason``, or ``None`` while the job may go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .noise import noise_kind
from .objective import Objective
from .observation import Observation, is_full_fidelity
from .optimizer import DEFAULT_SETTINGS, SearchSettings, predicted_gain
from .pareto import hypervolume, infer_reference
from .space import SearchSpace

__all__ = ["progress_curve", "stop_reason"]


def stop_reason(
    history: Sequence[Observation],
    objective: Objective,
    *,
    max_trials: int,
    n_trials: int | None = None,
    elapsed_s: float | None = None,
    max_minutes: float | None = None,
    patience: int | None = None,
    min_improvement: float = 0.0,
    space: SearchSpace | None = None,
    settings: SearchSettings = DEFAULT_SETTINGS,
    seed: int = 0,
) -> str | None:
    """Why the job must stop, or None while it may go on.

    Args:
        history: the finished trials in trial order (``metrics=None`` for a failed one).
        objective: the job's objective (feasibility and what "better" means).
        max_trials: the trial budget; counted against ``n_trials``.
        n_trials: trials created so far, queued and running ones included (default:
            ``len(history)``).
        elapsed_s: seconds since the job started (None: not started, no time rule).
        max_minutes: the time budget (None or 0: none).
        patience: stop after this many finished trials without improvement (None: never).
        min_improvement: the relative gain that counts as an improvement (>= 0).
        space: the job's search space; None: no convergence rule.
        settings: the job's search settings (the convergence rule's switches and the
            validation split's size).
        seed: the job's seed (the model fit is seeded like the optimiser's).
    """
    n_trials = len(history) if n_trials is None else n_trials
    if n_trials >= max_trials:
        return f"trial budget spent ({max_trials} trials)"
    if max_minutes and elapsed_s is not None and elapsed_s >= 60.0 * max_minutes:
        return f"time budget spent ({max_minutes:g} minutes)"
    history = [obs for obs in history if is_full_fidelity(obs)]
    return _stale(history, objective, patience, min_improvement) or _converged(
        history, objective, space, settings, seed
    )


def _stale(
    history: Sequence[Observation],
    objective: Objective,
    patience: int | None,
    min_improvement: float,
) -> str | None:
    """The patience rule's sentence, or None."""
    if patience is None or patience <= 0 or len(history) < patience:
        return None
    curve = progress_curve(history, objective)
    last = _last_improvement(curve, min_improvement)
    stale = len(history) - 1 - last if last is not None else len(history)
    if stale < patience:
        return None
    if last is None:
        return f"no feasible trial in the first {len(history)} finished trials"
    what = "hypervolume" if objective.kind == "pareto" else objective.metric_names[0]
    return (
        f"no improvement in the last {stale} finished trials (patience {patience}; "
        f"best {what} {curve[last]:.6g} since trial {last})"
    )


def _converged(
    history: Sequence[Observation],
    objective: Objective,
    space: SearchSpace | None,
    settings: SearchSettings,
    seed: int,
) -> str | None:
    """The convergence rule's sentence, or None."""
    if space is None or not settings.stop_below_noise or settings.method != "bo":
        return None
    if objective.kind != "single" or len(history) < settings.stop_min_trials:
        return None
    if not any(objective.is_feasible(obs.metrics) for obs in history):
        return None
    answer = predicted_gain(space, objective, history, seed=seed, settings=settings)
    if answer is None or not answer[0] < answer[1]:
        return None
    gain, noise = answer
    name = objective.metric_names[0]
    if noise_kind(name) == "exact":
        relative = settings.stop_relative_gain
        return (
            f"converged: the best predicted gain of {name} ({gain:.3g}) is below "
            f"{100 * relative:g}% of its best ({noise / relative:.3g})"
        )
    return (
        f"converged: the best predicted gain of {name} ({gain:.3g}) is below its measurement "
        f"noise ({noise:.3g})"
    )


def progress_curve(history: Sequence[Observation], objective: Objective) -> list[float]:
    """After each finished trial, the best feasible objective value so far (single) or the
    feasible front's hypervolume (Pareto); NaN until a trial is feasible."""
    feasible = [objective.is_feasible(obs.metrics) for obs in history]
    if objective.kind == "pareto":
        points = [obs.metrics for obs, ok in zip(history, feasible, strict=True) if ok]
        reference = infer_reference(points, objective.metrics)
        curve, front = [], []
        for obs, ok in zip(history, feasible, strict=True):
            if ok:
                front.append(obs.metrics)
            curve.append(
                hypervolume(front, objective.metrics, reference)
                if front and reference
                else math.nan
            )
        return curve
    name, goal = objective.metrics[0]
    sign = 1.0 if goal == "max" else -1.0
    curve, best = [], math.nan
    for obs, ok in zip(history, feasible, strict=True):
        if ok:
            value = float(obs.metrics[name])
            best = value if math.isnan(best) or sign * value > sign * best else best
        curve.append(best)
    return curve


def _last_improvement(curve: Sequence[float], min_improvement: float) -> int | None:
    """Index of the last trial that moved the curve by more than ``min_improvement`` of its
    value at the previous counted improvement (the first finite value counts); None if the
    curve stays NaN. The curve only moves in the good direction (a running best or a growing
    hypervolume), so small gains add up until they count.
    """
    last, reference = None, math.nan
    for i, value in enumerate(curve):
        if math.isnan(value):
            continue
        if math.isnan(reference) or (
            value != reference and abs(value - reference) > min_improvement * abs(reference)
        ):
            last, reference = i, value
    return last
