"""Objective: parsing the three forms, errors naming the field, feasibility."""

import math

import pytest

from search import METRICS, Constraint, Objective, ObjectiveError


def test_parses_constrained_maximize():
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )
    assert objective.kind == "single"
    assert objective.metrics == [("compression_ratio", "max")]
    assert objective.constraints == [Constraint("accuracy_drop", None, 0.01)]
    assert objective.modelled_metrics == ["compression_ratio", "accuracy_drop"]


def test_parses_minimize_without_constraints():
    objective = Objective.from_spec({"minimize": "latency_ms"})
    assert objective.metrics == [("latency_ms", "min")] and objective.constraints == []


def test_parses_pareto_and_round_trips():
    spec = {
        "pareto": [{"metric": "accuracy", "goal": "max"}, {"metric": "size_bytes", "goal": "min"}],
        "constraints": [{"metric": "latency_ms", "min": 0.5, "max": 3.0}],
    }
    objective = Objective.from_spec(spec)
    assert objective.kind == "pareto"
    assert objective.metrics == [("accuracy", "max"), ("size_bytes", "min")]
    assert objective.modelled_metrics == ["accuracy", "size_bytes", "latency_ms"]
    assert Objective.from_spec(objective.to_spec()) == objective


def test_unknown_metric_lists_allowed_names():
    with pytest.raises(ObjectiveError) as info:
        Objective.from_spec({"maximize": "compresion_ratio"})
    assert info.value.field == "objective.maximize"
    assert all(name in str(info.value) for name in METRICS)
    with pytest.raises(ObjectiveError) as info:
        Objective.from_spec({"minimize": "loss", "constraints": [{"metric": "acc", "max": 1}]})
    assert info.value.field == "objective.constraints[0].metric"
    assert "accuracy_drop" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "objective"),
        ({"maximize": "loss", "minimize": "loss"}, "objective"),
        ({"maximize": "loss", "target": 1}, "objective.target"),
        ({"pareto": [{"metric": "accuracy", "goal": "max"}]}, "objective.pareto"),
        (
            {"pareto": [{"metric": "accuracy", "goal": "up"}, {"metric": "loss", "goal": "min"}]},
            "objective.pareto[0].goal",
        ),
        (
            {"pareto": [{"metric": "loss", "goal": "min"}, {"metric": "loss", "goal": "min"}]},
            "objective.pareto[1].metric",
        ),
        ({"maximize": "accuracy", "constraints": [{"metric": "loss"}]}, "objective.constraints[0]"),
        (
            {"maximize": "accuracy", "constraints": [{"metric": "loss", "max": "x"}]},
            "objective.constraints[0].max",
        ),
        (
            {"maximize": "accuracy", "constraints": [{"metric": "loss", "min": 2, "max": 1}]},
            "objective.constraints[0]",
        ),
        (
            {"maximize": "accuracy", "constraints": [{"metric": "loss", "below": 1}]},
            "objective.constraints[0].below",
        ),
        ({"maximize": "accuracy", "constraints": {"metric": "loss"}}, "objective.constraints"),
    ],
)
def test_invalid_objective_names_the_field(spec, field):
    with pytest.raises(ObjectiveError) as info:
        Objective.from_spec(spec)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_is_feasible():
    objective = Objective.from_spec(
        {
            "maximize": "compression_ratio",
            "constraints": [
                {"metric": "accuracy_drop", "max": 0.01},
                {"metric": "latency_ms", "min": 1.0, "max": 2.0},
            ],
        }
    )
    good = {"compression_ratio": 8.0, "accuracy_drop": 0.01, "latency_ms": 1.0}
    assert objective.is_feasible(good)
    assert not objective.is_feasible({**good, "accuracy_drop": 0.0101})
    assert not objective.is_feasible({**good, "latency_ms": 2.5})
    assert not objective.is_feasible({**good, "latency_ms": 0.5})
    assert not objective.is_feasible({**good, "accuracy_drop": math.nan})
    assert not objective.is_feasible({**good, "compression_ratio": math.inf})
    assert not objective.is_feasible({"compression_ratio": 8.0, "latency_ms": 1.5})
    assert not objective.is_feasible(None)
