"""Condensa's two-phase search (``SearchSettings(method="two-phase")``): which jobs it fits,
the level-set phase that locates the boundary, then the objective below it."""

import math

import pytest

from search import Candidate, Objective, Observation, SearchSpace, best_feasible, propose
from search.optimizer import SearchSettings, SearchSettingsError

TWO_PHASE = SearchSettings.from_spec({"method": "two-phase"})


def toy(s: float) -> dict[str, float]:
    return {"compression_ratio": 1.0 / (1.0 - 0.9 * s), "accuracy_drop": s**3}


def test_two_phase_needs_one_strength_and_constraints(constrained, one_d):
    two = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "p",
                    "steps": [
                        {
                            "op": "prune",
                            "sparsity": {"min": 0, "max": 1},
                            "scope": {"choices": ["global", "layer"]},
                        }
                    ],
                }
            ]
        }
    )
    with pytest.raises(SearchSettingsError, match="exactly one numeric"):
        propose(two, constrained, [], [], 1, seed=0, settings=TWO_PHASE)
    with pytest.raises(SearchSettingsError, match="with constraints"):
        propose(
            one_d,
            Objective.from_spec({"maximize": "accuracy"}),
            [],
            [],
            1,
            seed=0,
            settings=TWO_PHASE,
        )


def test_two_phase_finds_the_boundary_then_optimises_below_it(constrained, one_d):
    optimum = 0.5 ** (1 / 3)
    history, methods = [], []
    for _ in range(8):
        (proposal,) = propose(one_d, constrained, history, [], 1, seed=0, settings=TWO_PHASE)
        methods.append(proposal.reason["method"])
        s = proposal.candidate.params["0.sparsity"]
        history.append(Observation(proposal.candidate, toy(s)))
    assert methods[:2] == ["sobol", "sobol"] and "level-set" in methods
    assert methods[-1] == "LogCEI" and history[-1] is not None
    best = history[best_feasible(history, constrained)].candidate.params["0.sparsity"]
    assert optimum - 0.01 <= best <= optimum, (best, methods)
    phase2 = propose(one_d, constrained, history, [], 2, seed=0, settings=TWO_PHASE)
    assert [p.reason["phase"] for p in phase2] == [2, 2]
    assert all(
        p.candidate.params["0.sparsity"] <= phase2[0].reason["upper_bound"]["0.sparsity"]
        for p in phase2
    )


def test_level_set_batch_spreads_with_pending_points(constrained, one_d):
    history = [Observation(Candidate("prune", {"0.sparsity": s}), toy(s)) for s in (0.1, 0.5, 0.95)]
    proposals = propose(one_d, constrained, history, [], 3, seed=0, settings=TWO_PHASE)
    assert [p.reason["method"] for p in proposals] == ["level-set"] * 3
    values = sorted(p.candidate.params["0.sparsity"] for p in proposals)
    assert len(set(values)) == 3 and 0.5 < values[1] < 0.95
    assert all(math.isfinite(p.reason["acquisition_value"]) for p in proposals)
