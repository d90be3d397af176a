"""The metrics every trial records: their names, which way is better, and their units.

:data:`METRIC_TABLE` is the one list of the job spec's metric names (docs/job-spec.md shows
the same table, checked by the tests): an objective may name only these (:mod:`.objective`),
and the ones marked ``positive`` are modelled in log space (:mod:`.warp`). Whoever measures a
trial records every one of them; a layer above this library that needs the names (the API,
the workers) imports them from here.

:data:`REPORTED_METRICS` are measured on the test split, which the search never sees: every
trial reports them, but an objective or constraint may not name them.

Each metric names how its measurement is noisy (``noise``, read by :mod:`.noise`):
``"binomial"`` (a fraction of the validation samples: standard error ``sqrt(p(1-p)/n)``),
``"exact"`` (counted, not sampled: no noise), or ``"measured"`` (timed or averaged: known only
from replicates).

A value of a metric is usable when it is a finite number: not None, not a bool, not NaN or
infinite (:func:`is_finite`, :func:`finite_values`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "METRICS", "METRIC_TABLE", "REPORTED_METRICS", "Goal", "Metric", "NoiseKind", "finite_values",
    "is_finite",
]  # fmt: skip

#: Which way is better: ``"max"`` or ``"min"``.
Goal = Literal["max", "min"]
#: How a metric's measurement is noisy (see the module docstring).
NoiseKind = Literal["binomial", "exact", "measured"]


@dataclass(frozen=True)
class Metric:
    """One metric of a trial: ``better`` is its natural goal (an objective may still ask for
    the other), ``unit`` its unit, ``meaning`` what is measured, and ``positive`` whether it
    is positive by nature and varies over orders of magnitude; ``noise`` how its measurement
    is noisy."""

    name: str
    better: Goal
    unit: str
    meaning: str
    positive: bool = False
    noise: NoiseKind = "exact"


#: Every metric of a trial, by name, in the order of the job spec.
METRIC_TABLE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "accuracy",
            "max",
            "fraction",
            "top-1 on the validation split, fraction 0..1",
            noise="binomial",
        ),
        Metric(
            "accuracy_drop",
            "min",
            "fraction",
            "baseline accuracy minus this trial's, absolute fraction (0.01 = one point)",
            noise="binomial",
        ),
        Metric("loss", "min", "nats", "validation loss", noise="measured"),
        Metric("params", "min", "count", "parameters stored by the packed model", True),
        Metric("nonzero_params", "min", "count", "of those, nonzero", True),
        Metric(
            "size_bytes",
            "min",
            "bytes",
            "bytes of the packed checkpoint file that the user downloads",
            True,
        ),
        Metric(
            "compression_ratio",
            "max",
            "ratio",
            "baseline size_bytes / this size_bytes (baseline = the dense fp32 checkpoint)",
            True,
        ),
        Metric(
            "macs",
            "min",
            "MACs per sample",
            "multiply-accumulates per sample actually executed by the packed model",
            True,
        ),
        Metric(
            "latency_ms",
            "min",
            "ms",
            "median latency of one batch on the worker's device, measured, batch size in the job",
            True,
            "measured",
        ),
        Metric("throughput", "max", "samples/s", "samples per second, measured", True, "measured"),
        Metric("duration_s", "min", "s", "wall time of the trial", True, "measured"),
    )
}

#: The metric names, in order.
METRICS: tuple[str, ...] = tuple(METRIC_TABLE)

#: Metrics a trial reports but no objective or constraint may name: measured on the test split
#: the search never sees (select on validation, report on test).
REPORTED_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "test_accuracy",
            "max",
            "fraction",
            "top-1 on the test split, fraction 0..1",
            noise="binomial",
        ),
        Metric(
            "test_accuracy_drop",
            "min",
            "fraction",
            "baseline test_accuracy minus this trial's, absolute fraction",
            noise="binomial",
        ),
    )
}


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a usable metric value: a finite number, not a bool or None."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def finite_values(point: Mapping[str, Any] | None, names: Sequence[str]) -> list[float] | None:
    """The values of ``names`` in ``point`` as floats, or None if any is missing or not
    finite (or ``point`` is None)."""
    if point is None:
        return None
    values = [point.get(name) for name in names]
    if not all(is_finite(v) for v in values):
        return None
    return [float(v) for v in values]
