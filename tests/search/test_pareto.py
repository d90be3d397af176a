"""Pareto front, hypervolume and best feasible trial, checked against hand computations."""

import math

import pytest

from search import (
    Candidate,
    Objective,
    Observation,
    best_feasible,
    feasible_front,
    hypervolume,
    infer_reference,
    pareto_front,
)

GOALS = [("accuracy", "max"), ("size_bytes", "min")]


def _points(pairs):
    return [{"accuracy": a, "size_bytes": s} for a, s in pairs]


def test_front_of_hand_made_points():
    points = _points([(0.9, 10), (0.8, 5), (0.85, 12), (0.95, 20), (0.8, 5), (0.7, 6)])
    points.append({"accuracy": math.nan, "size_bytes": 1})
    points.append(None)
    # (0.85, 12) is dominated by (0.9, 10); (0.7, 6) by (0.8, 5); ties (0.8, 5) both kept
    assert pareto_front(points, GOALS) == [0, 1, 3, 4]


def test_front_respects_goal_direction():
    points = [{"loss": 1.0, "macs": 3.0}, {"loss": 2.0, "macs": 1.0}, {"loss": 2.0, "macs": 3.0}]
    assert pareto_front(points, [("loss", "min"), ("macs", "min")]) == [0, 1]
    assert pareto_front(points, [("loss", "max"), ("macs", "max")]) == [2]


def test_hypervolume_of_known_2d_set():
    # maximise both; staircase (1, 3), (2, 2), (3, 1) over reference (0, 0): 3 + 2 + 1 = 6
    goals = [("accuracy", "max"), ("throughput", "max")]
    points = [{"accuracy": a, "throughput": t} for a, t in [(1, 3), (2, 2), (3, 1), (1, 1)]]
    assert hypervolume(points, goals, {"accuracy": 0, "throughput": 0}) == pytest.approx(6.0)
    # a minimised goal: sizes 3, 2, 1 below reference 4 -> same staircase
    points = _points([(1, 1), (2, 2), (3, 3)])
    assert hypervolume(points, GOALS, {"accuracy": 0, "size_bytes": 4}) == pytest.approx(6.0)
    # points not better than the reference add nothing
    assert hypervolume(_points([(-1, 1)]), GOALS, {"accuracy": 0, "size_bytes": 4}) == 0.0


def test_hypervolume_3d_matches_box():
    goals = [("accuracy", "max"), ("throughput", "max"), ("macs", "min")]
    points = [
        {"accuracy": 2, "throughput": 3, "macs": 1},
        {"accuracy": 1, "throughput": 1, "macs": 2},
    ]
    reference = {"accuracy": 0, "throughput": 0, "macs": 5}
    assert hypervolume(points, goals, reference) == pytest.approx(2 * 3 * 4)


def test_infer_reference_is_nadir_minus_a_tenth_of_the_range():
    reference = infer_reference(_points([(0.9, 10), (0.7, 30)]), GOALS)
    assert reference == pytest.approx({"accuracy": 0.68, "size_bytes": 32})


def test_best_feasible_and_feasible_front():
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )
    c = Candidate("s", {})
    history = [
        Observation(c, {"compression_ratio": 5.0, "accuracy_drop": 0.005}),
        Observation(c, {"compression_ratio": 9.0, "accuracy_drop": 0.05}),  # infeasible
        Observation(c, None),  # failed
        Observation(c, {"compression_ratio": 7.0, "accuracy_drop": 0.01}),
        Observation(c, {"compression_ratio": 7.0, "accuracy_drop": 0.0}),
    ]
    assert best_feasible(history, objective) == 3
    assert best_feasible(history[1:3], objective) is None
    pareto = Objective.from_spec(
        {
            "pareto": [
                {"metric": "compression_ratio", "goal": "max"},
                {"metric": "accuracy_drop", "goal": "min"},
            ],
            "constraints": [{"metric": "accuracy_drop", "max": 0.01}],
        }
    )
    assert feasible_front(history, pareto) == [4]


def test_best_of_a_pareto_objective_is_on_the_front_and_fronts_take_other_goals():
    pareto = Objective.from_spec(
        {"pareto": [{"metric": "accuracy", "goal": "max"}, {"metric": "size_bytes", "goal": "min"}]}
    )
    c = Candidate("s", {})
    history = [Observation(c, m) for m in _points([(0.9, 200), (0.9, 100), (0.8, 50)])]
    # (0.9, 200) ties on accuracy but is dominated by (0.9, 100): the best is on the front
    assert feasible_front(history, pareto) == [1, 2]
    assert best_feasible(history, pareto) == 1
    assert feasible_front(history, pareto, [("size_bytes", "min")]) == [2]
    assert feasible_front(history, pareto, [("accuracy", "max")]) == [0, 1]


def test_front_and_best_use_full_fidelity_results_only():
    objective = Objective.from_spec({"maximize": "accuracy"})
    history = [
        Observation(Candidate("p", {}), {"accuracy": 0.9}),
        Observation(Candidate("p", {}), {"accuracy": 0.99}, fidelity=0.5),  # a short fine-tune
        Observation(Candidate("p", {}), {"accuracy": 0.8}),
    ]
    assert best_feasible(history, objective) == 0
    assert feasible_front(history, objective) == [0]
    assert best_feasible(history[1:2], objective) is None
