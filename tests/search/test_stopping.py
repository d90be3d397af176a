"""stop_reason(): trial budget, time budget, patience on the best value or the hypervolume."""

import math

import pytest

from search import Candidate, Objective, Observation, progress_curve, stop_reason

SINGLE = Objective.from_spec(
    {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
)
PARETO = Objective.from_spec(
    {"pareto": [{"metric": "accuracy", "goal": "max"}, {"metric": "size_bytes", "goal": "min"}]}
)


def trials(*ratios, drop=0.0):
    """Observations with the given compression ratios (None: a failed trial)."""
    return [
        Observation(
            Candidate("prune", {"0.sparsity": i / 100}),
            None if r is None else {"compression_ratio": r, "accuracy_drop": drop},
        )
        for i, r in enumerate(ratios)
    ]


def test_trial_budget_counts_pending_trials():
    assert stop_reason(trials(1, 2), SINGLE, max_trials=3) is None
    assert stop_reason(trials(1, 2), SINGLE, max_trials=3, n_trials=3) == (
        "trial budget spent (3 trials)"
    )


def test_time_budget():
    history = trials(1, 2)
    assert stop_reason(history, SINGLE, max_trials=9, elapsed_s=59, max_minutes=1) is None
    reason = stop_reason(history, SINGLE, max_trials=9, elapsed_s=60, max_minutes=1)
    assert reason == "time budget spent (1 minutes)"
    assert stop_reason(history, SINGLE, max_trials=9, elapsed_s=1e9, max_minutes=None) is None


def test_patience_counts_trials_since_the_last_improvement():
    history = trials(1, 3, 2, None, 3)  # best 3 at trial 1; a tie is no improvement
    assert stop_reason(history, SINGLE, max_trials=99, patience=4) is None
    reason = stop_reason(history, SINGLE, max_trials=99, patience=3)
    assert reason.startswith("no improvement in the last 3 finished trials")
    assert "compression_ratio 3 since trial 1" in reason
    assert stop_reason(history + trials(4), SINGLE, max_trials=99, patience=3) is None


def test_min_improvement_is_relative_and_small_gains_add_up():
    history = trials(10, 10.03, 10.06, 10.09)  # +0.9% in all
    assert stop_reason(history, SINGLE, max_trials=99, patience=3, min_improvement=0.01)
    history = trials(10, 10.06, 10.12)  # +1.2% over trial 0 at trial 2
    assert progress_curve(history, SINGLE)[-1] == 10.12
    assert stop_reason(history, SINGLE, max_trials=99, patience=2, min_improvement=0.01) is None


def test_infeasible_trials_never_improve():
    history = trials(5, 6, 7, drop=0.5)
    assert all(math.isnan(v) for v in progress_curve(history, SINGLE))
    reason = stop_reason(history, SINGLE, max_trials=99, patience=3)
    assert reason == "no feasible trial in the first 3 finished trials"


@pytest.mark.parametrize(("last", "stops"), [((0.5, 400.0), True), ((0.99, 5.0), False)])
def test_pareto_patience_uses_the_hypervolume(last, stops):
    points = [(0.9, 100.0), (0.95, 200.0), (0.8, 300.0), (0.85, 150.0), last]
    history = [Observation(Candidate("p", {}), {"accuracy": a, "size_bytes": s}) for a, s in points]
    reason = stop_reason(history, PARETO, max_trials=99, patience=3)
    assert (reason is not None) == stops
    if stops:
        assert "hypervolume" in reason
