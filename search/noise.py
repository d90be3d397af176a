"""Measurement noise of the metrics: how far apart two measurements must be to differ.

Each metric of :data:`.metric_table.METRIC_TABLE` names its kind of noise (``Metric.noise``);
:func:`measurement_variances` turns it into one variance per observation, in the metric's
units:

* ``"binomial"`` (``accuracy``, ``accuracy_drop``): a fraction of ``n`` validation samples
  has the binomial variance ``p (1 - p) / n``, with ``p`` the trial's accuracy (for a
  ``*_drop`` metric, the accuracy it is the drop of: the baseline is the same constant for
  every trial, so it adds no spread between trials; ``p = 0.5``, the widest, if the trial has
  none) shrunk as ``(p n + 0.5) / (n + 1)`` so that 0 % and 100 % still have some noise.
  ``n`` is ``validation_samples`` (``SearchSettings.validation_samples``, set by whoever
  knows the split). When replicates exist (see below) the larger of the two is used, since
  replicates also measure the fine-tune's own randomness. With neither, the noise is unknown.
* ``"measured"`` (``loss``, ``latency_ms``, ``throughput``, ``duration_s``): the pooled
  variance of replicates, i.e. of full-fidelity observations of the same candidate (the same
  :meth:`.space.Candidate.key`), the same for every observation; unknown without replicates.
* ``"exact"`` (sizes, counts, ratios, MACs): zero.

An unknown noise is NaN: the optimiser then lets each GP infer it (:mod:`.optimizer`).
Observations without a finite value of the metric (failed trials) get the median of the
others.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from .metric_table import METRIC_TABLE, REPORTED_METRICS, NoiseKind, is_finite
from .observation import Observation, is_full_fidelity

__all__ = ["binomial_variance", "measurement_variances", "noise_kind", "replicate_variance"]


def noise_kind(name: str) -> NoiseKind:
    """The noise kind of metric ``name`` (``"measured"`` for a name no table knows)."""
    metric = METRIC_TABLE.get(name) or REPORTED_METRICS.get(name)
    return metric.noise if metric is not None else "measured"


def binomial_variance(p: float, n: int) -> float:
    """Variance of a fraction ``p`` of ``n`` samples, ``p`` shrunk to ``(p n + 0.5) / (n + 1)``.

    Raises:
        ValueError: if ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"validation_samples must be a positive integer, got {n!r}")
    p = min(1.0, max(0.0, float(p)))
    shrunk = (p * n + 0.5) / (n + 1)
    return shrunk * (1.0 - shrunk) / n


def replicate_variance(name: str, history: Sequence[Observation]) -> float | None:
    """Pooled variance of ``name`` over the candidates observed more than once at full
    fidelity, or None if no candidate was."""
    groups: defaultdict[str, list[float]] = defaultdict(list)
    for obs in history:
        if is_full_fidelity(obs) and obs.metrics is not None and is_finite(obs.metrics.get(name)):
            groups[obs.candidate.key()].append(float(obs.metrics[name]))
    squares, dof = 0.0, 0
    for values in groups.values():
        if len(values) >= 2:
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return squares / dof if dof else None


def _accuracy_of(name: str, obs: Observation) -> float:
    """The accuracy whose binomial spread metric ``name`` carries (0.5 if unknown)."""
    source = name.removesuffix("_drop") if name.endswith("_drop") else name
    value = obs.metrics.get(source) if obs.metrics is not None else None
    return float(value) if is_finite(value) else 0.5


def measurement_variances(
    name: str, history: Sequence[Observation], validation_samples: int | None = None
) -> Tensor:
    """One measurement variance per observation of ``history`` for metric ``name``, in its
    units (NaN where unknown; see the module docstring)."""
    kind = noise_kind(name)
    out = torch.full((len(history),), math.nan, dtype=torch.double)
    if kind == "exact":
        return out.zero_()
    replicates = replicate_variance(name, history)
    if kind == "binomial" and validation_samples is not None:
        for i, obs in enumerate(history):
            out[i] = binomial_variance(_accuracy_of(name, obs), validation_samples)
        if replicates is not None:
            out = out.clamp_min(replicates)
    elif replicates is not None:
        out.fill_(replicates)
    usable = torch.tensor(
        [obs.metrics is not None and is_finite(obs.metrics.get(name)) for obs in history],
        dtype=torch.bool,
    )
    known = out[usable & ~out.isnan()]
    if known.numel():
        out[~usable] = known.median()
    return out
