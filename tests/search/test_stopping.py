"""stop_reason(): trial budget, time budget, patience on the best value or the hypervolume,
convergence below the measurement noise, and full-fidelity trials only."""

import math
from dataclasses import replace

import pytest
import torch

from search import (
    Candidate,
    Objective,
    Observation,
    SearchSettings,
    predicted_gain,
    progress_curve,
    stop_reason,
)
from tests.search.conftest import VALIDATION_SAMPLES, plateau_metrics

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


def plateau_trials(sparsities, fidelity=1.0):
    generator = torch.Generator().manual_seed(0)
    return [
        Observation(Candidate("prune", {"0.sparsity": s}), plateau_metrics(s, generator), fidelity)
        for s in sparsities
    ]


#: The issue's landscape searched through: sparsity 0.5 to 0.99, densest at the bound (0.936).
SEARCHED = [0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.97, 0.99]


def test_stops_when_the_best_predicted_gain_is_below_the_noise(high_sparsity, tight):
    settings = SearchSettings(validation_samples=VALIDATION_SAMPLES)
    history = plateau_trials(SEARCHED)
    gain, noise = predicted_gain(high_sparsity, tight, history, settings=settings)
    assert 0 <= gain < noise
    reason = stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings)
    # compression_ratio is exact: the threshold is stop_relative_gain (1%) of its best
    best = noise / settings.stop_relative_gain
    feasible = [o.metrics["compression_ratio"] for o in history if tight.is_feasible(o.metrics)]
    assert best == pytest.approx(max(feasible), rel=0.1)
    assert reason == (
        f"converged: the best predicted gain of compression_ratio ({gain:.3g}) is below 1% of "
        f"its best ({best:.3g})"
    )
    # off, without the space, or with the rule's own switch off: no convergence rule
    assert stop_reason(history, tight, max_trials=99) is None
    off = replace(settings, stop_below_noise=False)
    assert stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=off) is None
    # the trial budget still comes first
    assert stop_reason(history, tight, max_trials=14, space=high_sparsity, settings=settings) == (
        "trial budget spent (14 trials)"
    )


def test_goes_on_while_a_gain_above_the_noise_is_predicted(high_sparsity, tight):
    settings = SearchSettings(validation_samples=VALIDATION_SAMPLES)
    history = plateau_trials([0.5 + 0.02 * i for i in range(10)])  # nothing beyond 0.68 yet
    gain, noise = predicted_gain(high_sparsity, tight, history, settings=settings)
    assert gain > noise
    assert (
        stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings) is None
    )


def test_a_noiseless_objective_converges_below_stop_relative_gain_of_its_best(
    high_sparsity, tight
):
    # still climbing: the best predicted gain is a large share of the best ratio
    history = plateau_trials([0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.91, 0.92, 0.93])
    settings = SearchSettings(validation_samples=VALIDATION_SAMPLES)
    gain, threshold = predicted_gain(high_sparsity, tight, history, settings=settings)
    assert gain > threshold
    assert stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings) is None
    # the same history stops once the threshold exceeds the gain
    loose = replace(settings, stop_relative_gain=0.99)
    _, threshold = predicted_gain(high_sparsity, tight, history, settings=loose)
    assert threshold > gain
    reason = stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=loose)
    assert reason.startswith("converged: the best predicted gain of compression_ratio")
    assert "below 99% of its best" in reason


def test_convergence_needs_enough_full_fidelity_trials(high_sparsity, tight):
    settings = SearchSettings(validation_samples=VALIDATION_SAMPLES, stop_min_trials=15)
    history = plateau_trials(SEARCHED)
    assert (
        stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings) is None
    )
    # a shorter fine-tune is not a full-fidelity trial: it counts towards nothing
    history += plateau_trials([0.96], fidelity=0.5)
    assert (
        stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings) is None
    )
    history += plateau_trials([0.96])
    reason = stop_reason(history, tight, max_trials=99, space=high_sparsity, settings=settings)
    assert reason is not None and reason.startswith("converged: the best predicted gain")


def test_patience_ignores_low_fidelity_trials():
    history = trials(1, 3, 2)
    short = Observation(
        Candidate("prune", {"0.sparsity": 0.5}),
        {"compression_ratio": 9.0, "accuracy_drop": 0.0},
        0.3,
    )
    assert stop_reason([*history, short], SINGLE, max_trials=99, patience=1) is not None
    assert stop_reason([*history, *trials(4)], SINGLE, max_trials=99, patience=1) is None
