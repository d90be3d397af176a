"""Stateless ask-style optimiser: propose the next candidates from a history of trials.

:func:`propose` sees the finished trials (:class:`.observation.Observation`, ``metrics=None``
for a failed one) and the pending ones (candidates being evaluated), and returns ``n`` new
candidates (:class:`.observation.Proposal`, each with the reason it was chosen):

1. While fewer than ``n_initial`` trials exist (finished + pending), scrambled Sobol points:
   point number ``len(history) + len(pending) + i`` of the sequence seeded by ``seed``.
2. Then BoTorch: one GP per modelled metric (a ``SingleTaskGP`` with ``Standardize`` in a
   ``ModelListGP``), for the objective metric(s) and each constrained metric, each metric
   first warped by a monotone map (:mod:`.warp`: log of positive objectives, a log around
   the bound for constraints; bounds warped alike). Beyond ``fit_subset`` trials the
   hyperparameters are fitted on a seeded subset and the acquisition effort is capped. Then

   * ``qLogNoisyExpectedImprovement`` with constraints for a single objective (the analytic
     ``LogConstrainedExpectedImprovement``/``LogExpectedImprovement`` for one point with
     nothing pending), or
   * ``qLogNoisyExpectedHypervolumeImprovement`` with constraints for a Pareto objective
     (``qLogExpectedHypervolumeImprovement`` over the front of the posterior means for one
     point with nothing pending; reference point: the nadir of the feasible trials minus 10%
     of the range, in modelled units),

   optimised sequentially-greedy over the unit cube with the pending points as ``X_pending``;
   the strategy column and the columns of choices of strings are categorical: a categorical
   kernel in the GP (``MixedSingleTaskGP``, no input scaling since the encoding is already
   the unit cube) and every combination enumerated by ``optimize_acqf_mixed``. With
   ``SearchSettings(method="two-phase")``, Condensa's two phases instead (:mod:`.levelset`).
3. Failed trials and non-finite metrics stay in the data as infeasible points: the worst
   observed objective value and a constraint value beyond its bound. A shorter fine-tune's
   result (``Observation.fidelity < 1``, a rung of a multi-fidelity search) measures
   another function, the same one at less training: with ``low_fidelity_data`` (method
   ``"bo"``) it is data all the same, the fidelity an extra input column of every GP, and
   every prediction (acquisition, incumbent, noise checks, the proposal's ``predicted``) is
   made at fidelity 1 (:class:`_AtFullFidelity`), so a job with rungs models its many short
   trials instead of the few full ones. Without it (or with ``"two-phase"``) only
   full-fidelity trials are data, and a shorter one counts only as explored (for the Sobol
   points) and in ``n_observations``.
4. Measurement noise (:mod:`.noise`): a metric whose noise is known (accuracy with
   ``SearchSettings.validation_samples``, or replicates) has it as the GP's fixed noise
   (``train_Yvar``), carried into modelled units by the warp's slope (delta method); an
   exact metric or an unknown noise keeps the GP's inferred noise. Each modelled metric has
   a *resolution* in modelled units: ``noise_sigmas`` times the median standard error over
   the trials (the GP's inferred noise when unknown), or, for an exact metric,
   ``min_relative_change`` of its value (the median of ``|y| dz/dy``: a relative change).
5. No proposal within the noise (``skip_within_noise``, method ``"bo"``): a point ``x`` is
   *within the noise* of a reference point ``r`` (a finished usable full-fidelity trial, a
   pending one, or an earlier pick of the same batch) when both hold:

   * close: ``max_j |x_j - r_j| <= near_distance`` over the encoded columns (each in
     [0, 1]; a strategy or discrete column whose step exceeds ``near_distance`` then
     agrees), and
   * alike: for every modelled metric, ``|mu(x) - mu(r)| <= resolution`` (posterior means,
     modelled units).

   The acquisition's optimum, if within the noise of any reference, is replaced by the
   best point of the acquisition that is not (over the unit grid in 1-D, else over
   ``4 * raw_samples`` snapped scrambled Sobol points), and ``reason["skipped_within_noise"]``
   is 1 (else 0). If every point looked at is within the noise, the optimum stays: nothing
   is better, and :mod:`.stopping` decides whether to go on. :func:`predicted_gain` gives
   that rule the best predicted gain and the objective's noise.
6. Whatever goes wrong in fitting or optimising, the answer is Sobol points with reason
   ``"random-fallback"`` and the error text: :func:`propose` does not raise on real histories.

Same ``seed`` + same history + same pending = same proposals; the global RNG is untouched.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogConstrainedExpectedImprovement, LogExpectedImprovement
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import (
    qLogExpectedHypervolumeImprovement,
    qLogNoisyExpectedHypervolumeImprovement,
)
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.acquisition.objective import GenericMCObjective
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, ModelListGP, SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf, optimize_acqf_mixed
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.box_decompositions import FastNondominatedPartitioning
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

from . import levelset
from .metric_table import is_finite
from .noise import measurement_variances, noise_kind
from .objective import Objective
from .observation import Observation, Proposal, is_full_fidelity
from .pareto import infer_reference
from .space import Candidate, SearchSpace
from .warp import OutputWarp, choose_warps, warped_bounds

__all__ = [
    "SEARCH_METHODS",
    "SearchSettings",
    "SearchSettingsError",
    "default_n_initial",
    "predicted_gain",
    "propose",
]


SEARCH_METHODS = ("bo", "two-phase")


class SearchSettingsError(ValueError):
    """An invalid ``search`` section of a job; ``field`` names the JSON path at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SearchSettings:
    """How to search: the method, and the effort of fitting and acquisition optimisation
    (the defaults keep one call under a second at 200 trials on a 2-core CPU).

    ``method`` is ``"bo"`` (constrained or Pareto Bayesian optimisation) or ``"two-phase"``
    (Condensa's search for one strategy with a single strength parameter: first locate the
    largest strength meeting the constraints by level-set estimation, at most
    ``level_set_trials`` trials after the Sobol start or until the boundary is known within
    ``level_set_tolerance`` of the parameter's range; then qLogNEI below it).
    """

    method: str = "bo"
    num_restarts: int = 6
    raw_samples: int = 256
    mc_samples: int = 128
    maxiter: int = 100
    #: L-BFGS iterations of each GP's marginal-likelihood fit.
    fit_maxiter: int = 75
    #: Beyond this many trials, each GP's hyperparameters are fitted on a seeded subset of
    #: this size and then used with every trial (the fit is the cost that grows fastest),
    #: and the acquisition effort is capped by :data:`LARGE_HISTORY_EFFORT`.
    fit_subset: int = 40
    level_set_trials: int = 4
    level_set_tolerance: float = 0.01
    #: torch intra-op threads while fitting and optimising; the matrices are tiny, and more
    #: threads only add contention (10x slower on a busy 2-core machine). None: leave as is.
    num_threads: int | None = 1
    #: Samples of the validation split: the binomial noise of accuracy-like metrics
    #: (:mod:`.noise`); None: unknown (replicates, else the GP infers it). Set by whoever
    #: knows the dataset (the worker), not by the job.
    validation_samples: int | None = None
    #: No proposal within the noise of a finished, pending or just proposed point (the rule
    #: is in the module docstring).
    skip_within_noise: bool = True
    #: How many standard errors of a metric count as "within the noise".
    noise_sigmas: float = 1.0
    #: Largest distance (the largest difference of any encoded column, each in [0, 1]) at
    #: which two points are "close".
    near_distance: float = 0.05
    #: The resolution of a noiseless (``"exact"``) metric: a relative change smaller than
    #: this is not worth a trial next to a finished one, nor a trial at all when it is the
    #: best predicted gain of the objective (:mod:`.stopping`).
    min_relative_change: float = 0.05
    #: Stop the job when the best predicted gain is below the objective's noise, once there
    #: are at least ``stop_min_trials`` full-fidelity observations (single objective, "bo").
    stop_below_noise: bool = True
    stop_min_trials: int = 10
    #: For a noiseless objective (``compression_ratio``, ``size_bytes``: nothing to be
    #: below), the convergence rule's threshold instead: this fraction of the best value.
    #: Smaller than ``min_relative_change`` on purpose: a search still climbing a few percent
    #: per trial (its expected improvement, times the chance of feasibility, a few percent
    #: of the best) has not converged, though each step is too small to skip a point for.
    stop_relative_gain: float = 0.01
    #: Shorter fine-tunes (rungs) are data too, with their fidelity as a GP input column and
    #: predictions at fidelity 1 (the module docstring, item 3); method "bo" only.
    low_fidelity_data: bool = True

    def __post_init__(self) -> None:
        n = self.validation_samples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ValueError(f"validation_samples must be a positive integer or None, got {n!r}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> SearchSettings:
        """Parse a job's ``search`` JSON, e.g. ``{"method": "two-phase"}`` (None: defaults).

        Raises:
            SearchSettingsError: naming the field at fault and what is allowed.
        """
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise SearchSettingsError("search", "must be an object such as {'method': 'bo'}")
        unknown = sorted(set(spec) - {"method", *SPEC_FIELDS})
        if unknown:
            allowed = sorted({"method", *SPEC_FIELDS})
            raise SearchSettingsError(f"search.{unknown[0]}", f"unknown key; allowed: {allowed}")
        method = spec.get("method", "bo")
        if method not in SEARCH_METHODS:
            raise SearchSettingsError(
                "search.method", f"unknown method {method!r}; allowed: {', '.join(SEARCH_METHODS)}"
            )
        values = {
            key: _spec_value(key, spec[key], *SPEC_FIELDS[key])
            for key in SPEC_FIELDS
            if key in spec
        }
        return cls(method=method, **values)

    def for_history(self, n_observations: int) -> SearchSettings:
        """These settings with the effort capped by :data:`LARGE_HISTORY_EFFORT` once the
        history is larger than ``fit_subset``: by then the model is sharp, and each
        evaluation of the acquisition costs in proportion to the history."""
        if n_observations <= self.fit_subset:
            return self
        capped = {k: min(getattr(self, k), v) for k, v in LARGE_HISTORY_EFFORT.items()}
        return replace(self, **capped)

    def check(self, space: SearchSpace, objective: Objective) -> None:
        """Raise :class:`SearchSettingsError` if the method does not fit the job."""
        if self.method == "two-phase":
            if (
                space.n_strategies != 1
                or space.dim != 1
                or space.strategies[0].params[0].kind == "choice"
            ):
                raise SearchSettingsError(
                    "search.method",
                    "two-phase needs one strategy with exactly one numeric range parameter "
                    f"(its strength); this search space has {space.dim} free columns",
                )
            if objective.kind != "single" or not objective.constraints:
                raise SearchSettingsError(
                    "search.method",
                    "two-phase needs a single objective ('maximize' or 'minimize') with constraints",
                )


#: The noise settings a job's ``search`` JSON may give: ``(type, lowest, highest)``.
SPEC_FIELDS: dict[str, tuple[type, float, float]] = {
    "skip_within_noise": (bool, 0, 1),
    "noise_sigmas": (float, 0.0, 10.0),
    "near_distance": (float, 0.0, 1.0),
    "min_relative_change": (float, 0.0, 1.0),
    "stop_below_noise": (bool, 0, 1),
    "stop_min_trials": (int, 2, 10_000),
    "stop_relative_gain": (float, 0.0, 1.0),
    "low_fidelity_data": (bool, 0, 1),
}


def _spec_value(key: str, value: Any, kind: type, low: float, high: float) -> Any:
    """``value`` of the ``search`` JSON field ``key`` checked against its type and range."""
    where = f"search.{key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise SearchSettingsError(where, "must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SearchSettingsError(where, f"must be a number between {low:g} and {high:g}")
    if kind is int and value != int(value):
        raise SearchSettingsError(where, "must be an integer")
    if not low <= value <= high:
        raise SearchSettingsError(where, f"must be between {low:g} and {high:g}, got {value!r}")
    return kind(value)


DEFAULT_SETTINGS = SearchSettings()
#: Caps on the acquisition effort beyond ``fit_subset`` trials (keeps a call under a second
#: of CPU at 200 trials, see bench/README.md).
LARGE_HISTORY_EFFORT = {
    "num_restarts": 2,
    "raw_samples": 128,
    "mc_samples": 32,
    "maxiter": 40,
    "fit_maxiter": 20,
}
_SEED_MODULUS = 2**31


class _NotEnoughData(ValueError):
    """The history cannot support a model yet."""


def default_n_initial(dim: int) -> int:
    """Sobol points before the first model: ``max(2, min(5, dim + 1))``."""
    return max(2, min(5, dim + 1))


def propose(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    pending: Sequence[Candidate],
    n: int,
    *,
    seed: int,
    n_initial: int | None = None,
    settings: SearchSettings = DEFAULT_SETTINGS,
) -> list[Proposal]:
    """Propose ``n`` new candidates given the finished (``history``) and running
    (``pending``) trials. Deterministic in its inputs; never raises on odd histories
    (failed trials, NaN metrics, flat outputs): it falls back to Sobol points instead.

    Raises:
        SearchSettingsError: only when ``settings.method`` does not fit the space or the
            objective (see :meth:`SearchSettings.check`; check it when the job is created).
    """
    settings.check(space, objective)
    if n <= 0:
        return []
    seed = seed % _SEED_MODULUS  # any int works; 0 <= seed < 2**31 is used as given
    history, pending = list(history), list(pending)
    n_seen = len(history) + len(pending)
    n_initial = default_n_initial(space.dim) if n_initial is None else n_initial
    taken = {c.key() for c in pending}  # never proposed again
    explored = taken | {obs.candidate.key() for obs in history}  # avoided by Sobol points
    if n_seen < n_initial or space.dim == 0:
        candidates = _sobol_candidates(space, seed, n_seen, explored)
        return [Proposal(next(candidates), _reason("sobol", history)) for _ in range(n)]
    try:
        with _model_context(settings, seed * 1000 + len(history)):
            return _propose_with_model(
                space,
                objective,
                history,
                pending,
                n,
                seed=seed,
                taken=taken,
                explored=explored,
                settings=settings,
                n_initial=n_initial,
            )
    except Exception as error:  # noqa: BLE001 - any failure means "explore instead"
        reason = _reason("random-fallback", history, error=f"{type(error).__name__}: {error}")
        candidates = _sobol_candidates(space, seed, n_seen, explored)
        return [Proposal(next(candidates), dict(reason)) for _ in range(n)]


def predicted_gain(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    *,
    seed: int = 0,
    settings: SearchSettings = DEFAULT_SETTINGS,
) -> tuple[float, float] | None:
    """The best predicted gain of a single objective and the objective's noise, both in
    the objective metric's units; None when it cannot be told (a Pareto objective, no free
    column, too few full-fidelity trials, a failed fit).

    The gain is the largest expected improvement (constrained: times the probability that
    every constraint holds) over the model's candidates, the unit grid in 1-D, else
    ``4 * raw_samples`` scrambled Sobol points and the trials; the incumbent is the best
    posterior mean of the trials observed feasible (as for ``LogCEI``). The noise is the
    objective's resolution (the module docstring) for a noisy objective; a noiseless one
    (``"exact"``) has none, and gets ``stop_relative_gain`` of the incumbent's value
    instead. Both are computed in modelled units and brought back by the warp's slope at
    the incumbent.
    """
    if objective.kind != "single" or space.dim == 0:
        return None
    seed = seed % _SEED_MODULUS
    try:
        with _fitted_in_context(space, objective, history, settings, seed) as (fitted, settings):
            acqf, _ = _acquisition(fitted, objective, None, 1, seed, settings)
            if space.dim == 1 and space.fixed_features_list() == [{}]:
                pool = levelset.unit_grid(space)
            else:
                engine = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=seed)
                pool = space.snap(engine.draw(4 * settings.raw_samples, dtype=torch.double))
                pool = torch.cat([pool, fitted.X])
            with torch.no_grad():
                log_gain = float(acqf(pool.unsqueeze(-2)).max())
            incumbent = _best_posterior_mean(fitted, objective.metrics[0][1] == "max")
    except Exception:  # noqa: BLE001 - no model, no prediction: the rule does not apply
        return None
    warp = fitted.warps[0]
    value = warp.untransform(torch.tensor(incumbent))
    slope = float(warp.derivative(value).abs())
    if not math.isfinite(slope) or slope <= 0:
        return None
    if noise_kind(fitted.names[0]) == "exact":
        return math.exp(log_gain) / slope, settings.stop_relative_gain * abs(float(value))
    return math.exp(log_gain) / slope, float(fitted.resolution[0]) / slope


def promotion_scores(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    candidates: Sequence[Candidate],
    *,
    seed: int = 0,
    settings: SearchSettings = DEFAULT_SETTINGS,
) -> list[float] | None:
    """How much each of ``candidates`` (trials finished at a low rung) is worth continuing:
    its predicted objective at full fidelity times the probability that every constraint
    holds there (for a minimised objective, the value divided by that probability, negated),
    higher first; None when it cannot be told (a Pareto objective, no model with the
    fidelity column, too few trials, a failed fit): rank by the observed results instead.

    A short fine-tune is pessimistic about accuracy and says nothing new about size, so a
    candidate infeasible at a ninth of its epochs may be the best one at all of them; the
    model, fitted on every rung (item 3 of the module docstring), reads each at fidelity 1.
    """
    if objective.kind != "single" or not candidates or space.dim == 0:
        return None
    seed = seed % _SEED_MODULUS
    try:
        with _fitted_in_context(space, objective, history, settings, seed) as (fitted, _):
            if not isinstance(fitted.model, _AtFullFidelity):
                return None
            X = torch.stack([space.encode(c) for c in candidates])
            with torch.no_grad():
                posterior = fitted.model.posterior(X)
                mean, std = posterior.mean, posterior.variance.clamp_min(1e-12).sqrt()
    except Exception:  # noqa: BLE001 - no model, no prediction: rank by the results
        return None
    normal = torch.distributions.Normal(0.0, 1.0)
    feasible = torch.ones(len(candidates), dtype=mean.dtype)
    for j, bound, sign in fitted.bounds:
        feasible = feasible * normal.cdf(sign * (bound - mean[:, j]) / std[:, j])
    value = fitted.warps[0].untransform(mean[:, 0])
    if objective.metrics[0][1] == "max":
        scores = feasible * value
    else:
        scores = -value / feasible.clamp_min(1e-9)
    return [float(v) if math.isfinite(float(v)) else -math.inf for v in scores]


# ------------------------------------------------------------------- helpers
@contextmanager
def _fitted_in_context(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    settings: SearchSettings,
    seed: int,
) -> Iterator[tuple[_Fitted, SearchSettings]]:
    """The model of ``history`` (:func:`_fit`) and the settings for its size, inside the
    seeded model context that every read of it must stay in; ``seed`` already reduced."""
    with _model_context(settings, seed * 1000 + len(history)):
        settings = settings.for_history(len(history))
        yield _fit(space, objective, history, settings, seed), settings


@contextmanager
def _model_context(settings: SearchSettings, seed: int) -> Iterator[None]:
    """Fit and optimise quietly, with ``settings.num_threads`` and a torch RNG seeded by
    ``seed`` that leaves the global one untouched."""
    with (
        warnings.catch_warnings(),
        torch.random.fork_rng(devices=[]),
        _torch_threads(settings.num_threads),
    ):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        yield


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, restoring the previous number after."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _reason(
    method: str,
    history: Sequence[Observation],
    *,
    acquisition_value: float | None = None,
    predicted: dict[str, dict[str, float]] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    reason: dict[str, Any] = {
        "method": method,
        "acquisition_value": _json_number(acquisition_value),
        "predicted": predicted or {},
        "n_observations": len(history),
    }
    if error is not None:
        reason["error"] = error
    return reason


def _sobol_candidates(
    space: SearchSpace, seed: int, start: int, taken: set[str], max_skips: int = 256
) -> Iterator[Candidate]:
    """Candidates from point ``start`` of the scrambled Sobol sequence seeded by ``seed``,
    skipping those in ``taken`` (at most ``max_skips`` times: a small discrete space may be
    exhausted). Every candidate yielded is added to ``taken``."""
    engine = torch.quasirandom.SobolEngine(max(space.dim, 1), scramble=True, seed=seed)
    if start:
        engine.fast_forward(start)
    skips = 0
    while True:
        x = engine.draw(1, dtype=torch.double)[0, : space.dim]
        candidate = space.decode(x)
        if candidate.key() in taken and skips < max_skips:
            skips += 1
            continue
        taken.add(candidate.key())
        yield candidate


def _json_number(value: Any) -> float | None:
    """``float(value)``, or None where JSON has no number for it (NaN, inf, None)."""
    return float(value) if is_finite(value) else None


def _failure_fill(name: str, values: Tensor, objective: Objective) -> float:
    """The value a failed trial gets for metric ``name``: beyond a constraint bound if the
    metric is constrained, else the worst observed objective value."""
    low, high = float(values.min()), float(values.max())
    span = high - low if high > low else max(abs(high), 1.0)
    goal = dict(objective.metrics).get(name)
    maxes = [c.max for c in objective.constraints if c.metric == name and c.max is not None]
    mins = [c.min for c in objective.constraints if c.metric == name and c.min is not None]
    above = max([high, *maxes]) + 0.1 * span
    below = min([low, *mins]) - 0.1 * span
    if maxes and mins:
        return below if goal == "max" else above
    if maxes:
        return above
    if mins:
        return below
    return low if goal == "max" else high


def _training_data(
    space: SearchSpace, objective: Objective, history: Sequence[Observation]
) -> tuple[Tensor, Tensor, list[str]]:
    """``n x d`` inputs and ``n x m`` outputs (objective metrics, then constrained ones)."""
    names = objective.modelled_metrics
    usable = [
        obs.metrics is not None and all(is_finite(obs.metrics.get(m)) for m in names)
        for obs in history
    ]
    if sum(usable) < 2:
        raise _NotEnoughData(
            f"need 2 finished trials with finite {names} to fit a model, have {sum(usable)}"
        )
    X = torch.stack([space.encode(obs.candidate) for obs in history])
    Y = torch.full((len(history), len(names)), math.nan, dtype=torch.double)
    ok = torch.tensor(usable)
    for i, obs in enumerate(history):
        if usable[i]:
            Y[i] = torch.tensor([float(obs.metrics[m]) for m in names], dtype=torch.double)
    for j, name in enumerate(names):
        Y[~ok, j] = _failure_fill(name, Y[ok, j], objective)
    n_objectives = len(objective.metrics)
    if all(float(Y[ok, j].max() - Y[ok, j].min()) == 0.0 for j in range(n_objectives)):
        raise _NotEnoughData(f"all observed values of {objective.metric_names} are equal")
    return X, Y, names


def _gp(X: Tensor, y: Tensor, cat_dims: list[int], yvar: Tensor | None = None) -> SingleTaskGP:
    """An unfitted GP of one output column, outcome standardised, with the fixed noise
    ``yvar`` (None: the noise is inferred). Inputs are already in the unit cube, so there
    is no input scaling; categorical columns (``cat_dims``) get a categorical kernel
    (``MixedSingleTaskGP``) instead of a distance."""
    if cat_dims and len(cat_dims) < X.shape[-1]:
        return MixedSingleTaskGP(
            X, y, cat_dims=cat_dims, train_Yvar=yvar, outcome_transform=Standardize(m=1)
        )
    return SingleTaskGP(X, y, train_Yvar=yvar, outcome_transform=Standardize(m=1))


def _fit_model(
    X: Tensor,
    Y: Tensor,
    cat_dims: list[int],
    settings: SearchSettings,
    seed: int,
    Yvar: Tensor | None = None,
) -> ModelListGP:
    """One GP per output column, each fitted by marginal likelihood on its own (faster than
    one joint fit) with at most ``settings.fit_maxiter`` L-BFGS steps. A column of ``Yvar``
    (measurement variances in modelled units) that is finite throughout is the GP's fixed
    noise; otherwise the GP infers its noise.

    With more than ``settings.fit_subset`` rows, the hyperparameters are fitted on a subset
    (seeded by ``seed``) and loaded into a GP of every row: the posterior still uses all
    the data, and the fit costs what it costs at ``fit_subset`` trials.
    """
    subset = None
    if X.shape[0] > settings.fit_subset:
        generator = torch.Generator().manual_seed(seed)
        subset = torch.randperm(X.shape[0], generator=generator)[: settings.fit_subset]
    models = []
    for j in range(Y.shape[-1]):
        y = Y[:, j : j + 1]
        yvar = None
        if Yvar is not None and bool(Yvar[:, j].isfinite().all()):
            yvar = Yvar[:, j : j + 1]
        rows = slice(None) if subset is None else subset
        gp = _gp(X[rows], y[rows], cat_dims, None if yvar is None else yvar[rows])
        fit_gpytorch_mll(
            ExactMarginalLogLikelihood(gp.likelihood, gp),
            optimizer_kwargs={"options": {"maxiter": settings.fit_maxiter}},
        )
        if subset is not None:
            # a fixed noise belongs to the rows, not to the fit: the new GP has its own
            skip = ("outcome_transform",) + (() if yvar is None else ("likelihood.noise_covar",))
            fitted = {k: v for k, v in gp.state_dict().items() if not k.startswith(skip)}
            gp = _gp(X, y, cat_dims, yvar)
            gp.load_state_dict(fitted, strict=False)
            gp.eval()
        models.append(gp)
    return ModelListGP(*models)


def _constraint_callables(
    bounds: Sequence[tuple[int, float, int]],
) -> list[Callable[[Tensor], Tensor]]:
    """BoTorch constraints from :func:`.warp.warped_bounds`: each callable is <= 0 where
    its bound holds."""

    def violation(Z: Tensor, j: int, bound: float, sign: int) -> Tensor:
        return sign * (Z[..., j] - bound)

    return [lambda Z, j=j, b=b, s=s: violation(Z, j, b, s) for j, b, s in bounds]


def _analytic_constraints(
    bounds: Sequence[tuple[int, float, int]], objective_column: int
) -> dict[int, tuple[float | None, float | None]] | None:
    """The ``{column: (lower, upper)}`` of BoTorch's analytic ``LogConstrainedExpectedImprovement``
    (the tightest bounds per column), or None where it cannot express them: a constrained
    objective column, or an empty interval."""
    intervals: dict[int, tuple[float | None, float | None]] = {}
    for j, bound, sign in bounds:
        if j == objective_column:
            return None
        low, high = intervals.get(j, (None, None))
        if sign > 0:
            high = bound if high is None else min(high, bound)
        else:
            low = bound if low is None else max(low, bound)
        if low is not None and high is not None and high <= low:
            return None
        intervals[j] = (low, high)
    return intervals


@dataclass
class _Fitted:
    """The model (read at full fidelity) and what is needed to read it: the training inputs
    (the encoded candidates, without the fidelity column),
    the modelled metrics (``names``), their warps, the constraint bounds in modelled units,
    which training rows were observed feasible and which were usable (not failed), and each
    metric's ``resolution`` in modelled units (the module docstring's "within the noise")."""

    model: ModelListGP | _AtFullFidelity
    X: Tensor
    Z: Tensor
    names: list[str]
    warps: list[OutputWarp]
    bounds: list[tuple[int, float, int]]
    feasible: Tensor
    usable: Tensor
    resolution: Tensor


def _fit(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    settings: SearchSettings,
    seed: int,
) -> _Fitted:
    """Warp the observed metrics (:mod:`.warp`), carry their measurement variances
    (:mod:`.noise`) into modelled units, and fit one GP per modelled metric: on the
    full-fidelity trials, or on every trial with its fidelity as a last input column (the
    module docstring, item 3)."""
    with_fidelity = (
        settings.low_fidelity_data and settings.method == "bo"
        and any(not is_full_fidelity(obs) for obs in history)
    )  # fmt: skip
    if not with_fidelity:
        history = [obs for obs in history if is_full_fidelity(obs)]
    X, Y, names = _training_data(space, objective, history)
    warps = choose_warps(objective, names, Y)
    Z = torch.stack([w.transform(Y[:, j]) for j, w in enumerate(warps)], dim=-1)
    usable = torch.tensor(
        [obs.metrics is not None and all(is_finite(obs.metrics.get(m)) for m in names)
         for obs in history]
    )  # fmt: skip
    Zvar = torch.stack(
        [
            measurement_variances(name, history, settings.validation_samples)
            * warps[j].derivative(Y[:, j]) ** 2
            for j, name in enumerate(names)
        ],
        dim=-1,
    )
    for j, name in enumerate(names):
        if noise_kind(name) == "exact":
            Zvar[:, j] = math.nan  # no measurement noise: the GP's own noise takes its misfit
        floor = 1e-6 * float(Z[usable, j].var()) if int(usable.sum()) > 1 else 1e-12
        Zvar[:, j] = Zvar[:, j].clamp_min(max(floor, 1e-12))
    inputs = X
    if with_fidelity:
        fidelity = torch.tensor([[min(obs.fidelity, 1.0)] for obs in history], dtype=X.dtype)
        inputs = torch.cat([X, fidelity], dim=-1)
    model = _fit_model(inputs, Z, space.categorical_columns, settings, seed, Zvar)
    feasible = torch.tensor([objective.is_feasible(obs.metrics) for obs in history])
    resolution = _resolution(model, names, warps, Y[usable], Zvar[usable], settings)
    bounds = warped_bounds(objective, names, warps)
    read: ModelListGP | _AtFullFidelity = _AtFullFidelity(model) if with_fidelity else model
    return _Fitted(read, X, Z, names, warps, bounds, feasible, usable, resolution)


class _AtFullFidelity(Model):
    """A model fitted with the fidelity as its last input column, read at fidelity 1: every
    ``posterior(X)`` of the ``d`` encoded columns gets a column of ones appended, so the
    acquisition functions, the incumbent and the noise checks all see the full-fidelity
    prediction and need not know about fidelity."""

    def __init__(self, model: ModelListGP) -> None:
        super().__init__()
        self.model = model

    @property
    def num_outputs(self) -> int:
        return self.model.num_outputs

    @property
    def batch_shape(self) -> torch.Size:
        return self.model.batch_shape

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> Any:
        ones = torch.ones(*X.shape[:-1], 1, dtype=X.dtype, device=X.device)
        return self.model.posterior(torch.cat([X, ones], dim=-1), *args, **kwargs)


def _resolution(
    model: ModelListGP,
    names: Sequence[str],
    warps: Sequence[OutputWarp],
    Y: Tensor,
    Zvar: Tensor,
    settings: SearchSettings,
) -> Tensor:
    """Per modelled metric, the smallest difference worth a trial, in modelled units:
    ``noise_sigmas`` standard errors (the median over the usable rows ``Y``/``Zvar``; the
    GP's inferred noise where the measurement noise is unknown), or for a noiseless metric
    ``min_relative_change`` of its value."""
    out = []
    for j, (name, warp) in enumerate(zip(names, warps, strict=True)):
        if noise_kind(name) == "exact":
            relative = (Y[:, j].abs() * warp.derivative(Y[:, j]).abs()).median()
            out.append(settings.min_relative_change * float(relative))
            continue
        if bool(Zvar[:, j].isfinite().all()):
            sd = float(Zvar[:, j].sqrt().median())
        else:
            gp = model.models[j]
            noise = gp.likelihood.noise.mean() * gp.outcome_transform.stdvs.reshape(-1)[0] ** 2
            sd = float(noise.detach().clamp_min(0).sqrt())
        out.append(settings.noise_sigmas * sd)
    return torch.tensor(out, dtype=torch.double)


def _redundant(
    fitted: _Fitted, candidates: Tensor, references: Tensor, settings: SearchSettings
) -> Tensor:
    """Which rows of ``candidates`` (``k x d``) are within the noise of a row of
    ``references`` (``r x d``): close (no encoded column differs by more than
    ``near_distance``) and predicted alike (every modelled metric's posterior means differ by
    at most its resolution)."""
    if not settings.skip_within_noise or references.numel() == 0 or candidates.numel() == 0:
        return torch.zeros(candidates.shape[0], dtype=torch.bool)
    distance = (candidates.unsqueeze(1) - references.unsqueeze(0)).abs().amax(dim=-1)
    close = distance <= settings.near_distance
    if not bool(close.any()):
        return close.any(dim=-1)
    with torch.no_grad():
        mean_c = fitted.model.posterior(candidates).mean
        mean_r = fitted.model.posterior(references).mean
    alike = ((mean_c.unsqueeze(1) - mean_r.unsqueeze(0)).abs() <= fitted.resolution).all(dim=-1)
    return (close & alike).any(dim=-1)


def _acquisition(
    fitted: _Fitted,
    objective: Objective,
    X_pending: Tensor | None,
    n: int,
    seed: int,
    settings: SearchSettings,
) -> tuple[AcquisitionFunction, str]:
    """The acquisition function and its short name for ``reason["method"]``.

    One point with nothing pending is measured against the posterior mean of the trials
    observed feasible, and so needs no joint sampling of the history: the analytic
    ``LogConstrainedExpectedImprovement`` (or ``LogExpectedImprovement``) for a single
    objective, ``qLogEHVI`` over the front of those means for a Pareto objective (several
    times cheaper than ``qLogNEHVI`` at 200 trials). Batches and pending points get the
    noisy Monte-Carlo ``qLogNEI``/``qLogNEHVI``, which integrate over the history.
    """
    signs = torch.tensor(
        [1.0 if goal == "max" else -1.0 for _, goal in objective.metrics], dtype=torch.double
    )
    if objective.kind == "single":
        maximize = bool(signs[0] > 0)
        intervals = _analytic_constraints(fitted.bounds, 0)
        if n == 1 and X_pending is None and intervals is not None:
            best_f = _best_posterior_mean(fitted, maximize)
            if intervals:
                analytic: AcquisitionFunction = LogConstrainedExpectedImprovement(
                    fitted.model, best_f, 0, intervals, maximize=maximize
                )
                return analytic, "LogCEI"
            return LogExpectedImprovement(fitted.model, best_f, maximize=maximize), "LogEI"

    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([settings.mc_samples]), seed=seed)
    constraints = _constraint_callables(fitted.bounds) or None
    if objective.kind == "single":
        sign = float(signs[0])
        acqf = qLogNoisyExpectedImprovement(
            model=fitted.model,
            X_baseline=fitted.X,
            sampler=sampler,
            objective=GenericMCObjective(lambda Z, X=None: sign * Z[..., 0]),
            X_pending=X_pending,
            constraints=constraints,
            prune_baseline=True,
        )
        return acqf, "qLogNEI"

    k = len(objective.metrics)
    rows = [dict(zip(objective.metric_names, z[:k].tolist(), strict=True)) for z in fitted.Z]
    feasible = [row for row, ok in zip(rows, fitted.feasible.tolist(), strict=True) if ok]
    reference = infer_reference(feasible, objective.metrics) or infer_reference(
        rows, objective.metrics
    )
    if reference is None:
        raise _NotEnoughData("no trial has finite values for every Pareto metric")
    ref_point = signs * torch.tensor(
        [reference[m] for m, _ in objective.metrics], dtype=torch.double
    )
    objective_mc = WeightedMCMultiOutputObjective(weights=signs, outcomes=list(range(k)))
    if n == 1 and X_pending is None and bool(fitted.feasible.any()):
        with torch.no_grad():
            means = fitted.model.posterior(fitted.X[fitted.feasible]).mean[:, :k] * signs
        partitioning = FastNondominatedPartitioning(ref_point=ref_point, Y=means)
        ehvi = qLogExpectedHypervolumeImprovement(
            model=fitted.model,
            ref_point=ref_point,
            partitioning=partitioning,
            sampler=sampler,
            objective=objective_mc,
            constraints=constraints,
        )
        return ehvi, "qLogEHVI"
    acqf = qLogNoisyExpectedHypervolumeImprovement(
        model=fitted.model,
        ref_point=ref_point,
        X_baseline=fitted.X,
        sampler=sampler,
        objective=objective_mc,
        constraints=constraints,
        X_pending=X_pending,
        prune_baseline=True,
    )
    return acqf, "qLogNEHVI"


def _best_posterior_mean(fitted: _Fitted, maximize: bool) -> float:
    """The incumbent of analytic EI on noisy data: the best posterior mean of the objective
    among the trials observed feasible (the worst one over all trials if none is)."""
    with torch.no_grad():
        mean = fitted.model.posterior(fitted.X).mean[:, 0]
    signed = mean if maximize else -mean
    best = signed[fitted.feasible].max() if bool(fitted.feasible.any()) else signed.min()
    return float(best if maximize else -best)


def _optimize_one(
    acqf: AcquisitionFunction,
    space: SearchSpace,
    settings: SearchSettings,
    reject: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> tuple[Tensor, float, int]:
    """The best ``1 x d`` point of the acquisition (snapped to what will be evaluated) that
    ``reject`` (a row mask) lets through, its value, and how many better points were
    rejected (0 or 1). When every point looked at is rejected, the optimum itself (nothing
    is better; :mod:`.stopping` decides whether to go on).

    Every combination of strategy and categorical values (:meth:`SearchSpace.fixed_features_list`)
    that leaves columns free goes through ``optimize_acqf_mixed``; a combination that fixes
    every column is a single point, evaluated directly (``optimize_acqf_mixed`` cannot mix
    the two). When the optimum is rejected, the next best is the best allowed point of
    ``4 * raw_samples`` scrambled Sobol points (snapped); in 1-D, of the whole grid.
    """
    if space.dim == 1 and space.fixed_features_list() == [{}]:  # exact: every value
        best, value, skipped = _best_allowed(acqf, levelset.unit_grid(space), reject)
        return best, value, max(skipped, 0)
    x, value = _acquisition_optimum(acqf, space, settings)
    if reject is None or not bool(reject(x)[0]):
        return x, value, 0
    engine = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=seed)
    pool = space.snap(engine.draw(4 * settings.raw_samples, dtype=torch.double))
    best, best_value, skipped = _best_allowed(acqf, pool, reject)
    return (best, best_value, 1) if skipped >= 0 else (x, value, 0)


def _best_allowed(
    acqf: AcquisitionFunction, points: Tensor, reject: Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, float, int]:
    """The row of ``points`` of highest acquisition that ``reject`` lets through, its value,
    and whether the highest of all was rejected (-1: all were, and the answer is the
    highest)."""
    with torch.no_grad():
        values = acqf(points.unsqueeze(-2)).reshape(-1)
    top = int(values.argmax())
    rejected = reject(points) if reject is not None else torch.zeros_like(values, dtype=torch.bool)
    if bool(rejected.all()):
        return points[top : top + 1], float(values[top]), -1
    best = int(values.masked_fill(rejected, -math.inf).argmax())
    return points[best : best + 1], float(values[best]), int(best != top and bool(rejected[top]))


def _acquisition_optimum(
    acqf: AcquisitionFunction, space: SearchSpace, settings: SearchSettings
) -> tuple[Tensor, float]:
    """The acquisition's optimum over the space (see :func:`_optimize_one`)."""
    bounds = torch.stack(
        [torch.zeros(space.dim, dtype=torch.double), torch.ones(space.dim, dtype=torch.double)]
    )
    common = dict(
        acq_function=acqf,
        bounds=bounds,
        q=1,
        num_restarts=settings.num_restarts,
        raw_samples=settings.raw_samples,
        options={"maxiter": settings.maxiter},
        post_processing_func=space.snap,
    )
    combos = space.fixed_features_list()
    if combos == [{}]:
        x, value = optimize_acqf(**common)
        return x.reshape(1, space.dim), float(value.reshape(-1)[0])
    options: list[tuple[Tensor, float]] = []
    free = [c for c in combos if len(c) < space.dim]
    if free:
        x, value = optimize_acqf_mixed(fixed_features_list=free, **common)
        options.append((x.reshape(1, space.dim), float(value.reshape(-1)[0])))
    for combo in combos:
        if len(combo) == space.dim:
            x = torch.tensor([[combo[c] for c in range(space.dim)]], dtype=torch.double)
            with torch.no_grad():
                options.append((x, float(acqf(x.unsqueeze(0)).reshape(-1)[0])))
    return max(options, key=lambda option: option[1])


def _propose_with_model(
    space: SearchSpace,
    objective: Objective,
    history: Sequence[Observation],
    pending: Sequence[Candidate],
    n: int,
    *,
    seed: int,
    taken: set[str],
    explored: set[str],
    settings: SearchSettings,
    n_initial: int,
) -> list[Proposal]:
    """Fit, optimise ``n`` points sequentially, and describe them; a proposal that repeats a
    pending or just proposed candidate (``taken``) is replaced by an unexplored Sobol point."""
    settings = settings.for_history(len(history))
    fitted = _fit(space, objective, history, settings, seed)
    model, names = fitted.model, fitted.names
    X_pending = torch.stack([space.encode(c) for c in pending]) if pending else None
    acqf, method = _acquisition(fitted, objective, X_pending, n, seed, settings)
    extra: dict[str, Any] = {}
    if settings.method == "two-phase":
        grid = levelset.unit_grid(space)
        feasible = levelset.feasibility(model, grid, fitted.bounds)
        n_seen = len(history) + len(pending)
        if n_seen < n_initial + settings.level_set_trials and not levelset.resolved(
            feasible, grid, settings.level_set_tolerance
        ):
            scales = fitted.Z.std(dim=0).clamp_min(1e-12)
            picks = levelset.level_set_points(
                model,
                grid,
                fitted.bounds,
                scales,
                X_pending,
                n,
                settings.level_set_tolerance,
            )
            method, extra = "level-set", {"phase": 1}
        else:
            picks = levelset.objective_points(acqf, grid, feasible, n)
            upper = grid[feasible >= levelset.MAY_BE_FEASIBLE]
            bound = space.decode(upper.max(dim=0).values) if upper.numel() else None
            extra = {"phase": 2, "upper_bound": bound.params if bound else None}
    else:
        picks = _greedy_picks(fitted, acqf, space, settings, X_pending, n, seed)

    points = torch.cat([x for x, *_ in picks])
    with torch.no_grad():
        posterior = model.posterior(points)
        mean, std = posterior.mean, posterior.variance.clamp_min(0).sqrt()
    described = [w.describe(mean[:, j], std[:, j]) for j, w in enumerate(fitted.warps)]
    n_seen = len(history) + len(pending)
    fallback = _sobol_candidates(space, seed, n_seen + n, explored)
    proposals = []
    for row, (_, value, *rest) in enumerate(picks):
        skipped = rest[0] if rest else 0
        candidate = space.decode(points[row])
        if candidate.key() in taken:  # same as a pending one or an earlier proposal
            reason = _reason(
                "random-fallback",
                history,
                error=f"{method} proposed a duplicate of a pending or just proposed candidate",
            )
            replacement = next(fallback)
            taken.add(replacement.key())
            proposals.append(Proposal(replacement, reason))
            continue
        taken.add(candidate.key())
        explored.add(candidate.key())
        predicted = {
            name: {"mean": _json_number(m[row]), "std": _json_number(sd[row])}
            for name, (m, sd) in zip(names, described, strict=True)
        }
        reason = _reason(method, history, acquisition_value=value, predicted=predicted)
        if settings.method == "bo" and settings.skip_within_noise:
            reason["skipped_within_noise"] = skipped
        proposals.append(Proposal(candidate, {**reason, **extra}))
    return proposals


def _greedy_picks(
    fitted: _Fitted,
    acqf: AcquisitionFunction,
    space: SearchSpace,
    settings: SearchSettings,
    X_pending: Tensor | None,
    n: int,
    seed: int,
) -> list[tuple[Tensor, float, int]]:
    """``n`` points, sequentially greedy (each one pending for the next), none within the
    noise of a finished full-fidelity trial, a pending point or an earlier pick."""
    references = fitted.X[fitted.usable]
    if X_pending is not None:
        references = torch.cat([references, X_pending])
    picks: list[tuple[Tensor, float, int]] = []
    for i in range(n):

        def reject(P: Tensor, refs: Tensor = references) -> Tensor:
            return _redundant(fitted, P, refs, settings)

        x, value, skipped = _optimize_one(acqf, space, settings, reject, seed + i)
        picks.append((x, value, skipped))
        references = torch.cat([references, x])
        if i + 1 < n:
            batch = torch.cat([p for p, *_ in picks])
            acqf.set_X_pending(batch if X_pending is None else torch.cat([X_pending, batch]))
    return picks
