"""The metric table: the one list of metric names, matching the job spec, and usable values."""

import math
import re
from pathlib import Path

import pytest

from search import METRIC_TABLE, METRICS
from search.metric_table import finite_values, is_finite
from search.warp import POSITIVE_METRICS

JOB_SPEC = Path(__file__).resolve().parents[2] / "docs" / "job-spec.md"


def test_names_directions_and_warps_come_from_the_table():
    assert METRICS == tuple(METRIC_TABLE) and len(set(METRICS)) == len(METRICS)
    assert all(name == m.name and m.better in ("max", "min") for name, m in METRIC_TABLE.items())
    assert [n for n in METRICS if METRIC_TABLE[n].better == "max"] == [
        "accuracy",
        "compression_ratio",
        "throughput",
    ]
    assert POSITIVE_METRICS == {n for n, m in METRIC_TABLE.items() if m.positive}
    assert {"accuracy", "accuracy_drop", "loss"}.isdisjoint(POSITIVE_METRICS)


def test_the_job_spec_documents_the_same_metrics_in_the_same_order():
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", JOB_SPEC.read_text(), flags=re.M)
    documented = [(name, meaning.replace("`", "")) for name, meaning in rows if name in METRICS]
    assert documented == [(m.name, m.meaning) for m in METRIC_TABLE.values()]


@pytest.mark.parametrize(
    ("value", "usable"),
    [(1, True), (0.5, True), ("2.5", True), (None, False), (True, False), (math.nan, False),
     (-math.inf, False), ("x", False), ([1], False)],
)  # fmt: skip
def test_is_finite(value, usable):
    assert is_finite(value) is usable


def test_finite_values_needs_every_name():
    point = {"accuracy": 0.9, "size_bytes": 120, "loss": math.nan}
    assert finite_values(point, ["size_bytes", "accuracy"]) == [120.0, 0.9]
    assert finite_values(point, ["accuracy", "loss"]) is None
    assert finite_values(point, ["accuracy", "macs"]) is None
    assert finite_values(None, ["accuracy"]) is None


def test_test_split_metrics_are_reported_but_not_searchable():
    from search import Objective
    from search.metric_table import REPORTED_METRICS
    from search.objective import ObjectiveError

    assert set(REPORTED_METRICS) == {"test_accuracy", "test_accuracy_drop"}
    assert set(REPORTED_METRICS).isdisjoint(METRICS)
    with pytest.raises(ObjectiveError):
        Objective.from_spec({"maximize": "test_accuracy"})
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", JOB_SPEC.read_text(), flags=re.M)
    documented = [(n, meaning.replace("`", "")) for n, meaning in rows if n in REPORTED_METRICS]
    assert documented == [(m.name, m.meaning) for m in REPORTED_METRICS.values()]
