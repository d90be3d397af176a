"""Condensa's two-phase search, the job's "search" settings, and categorical columns."""

import math

import pytest

from search import (
    Candidate,
    Objective,
    Observation,
    SearchSettings,
    SearchSettingsError,
    SearchSpace,
    best_feasible,
    propose,
)

ONE_D = SearchSpace.from_spec(
    {
        "strategies": [
            {"name": "prune", "steps": [{"op": "prune", "sparsity": {"min": 0.0, "max": 1.0}}]}
        ]
    }
)
CONSTRAINED = Objective.from_spec(
    {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.5}]}
)
TWO_PHASE = SearchSettings.from_spec({"method": "two-phase"})


def toy(s: float) -> dict[str, float]:
    return {"compression_ratio": 1.0 / (1.0 - 0.9 * s), "accuracy_drop": s**3}


def test_search_spec_parses_and_rejects_unknown_fields():
    assert SearchSettings.from_spec(None).method == "bo"
    assert TWO_PHASE.method == "two-phase"
    with pytest.raises(SearchSettingsError) as error:
        SearchSettings.from_spec({"method": "grid"})
    assert error.value.field == "search.method" and "two-phase" in str(error.value)
    with pytest.raises(SearchSettingsError, match="search.budget"):
        SearchSettings.from_spec({"budget": 3})


def test_two_phase_needs_one_strength_and_constraints():
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
        propose(two, CONSTRAINED, [], [], 1, seed=0, settings=TWO_PHASE)
    with pytest.raises(SearchSettingsError, match="with constraints"):
        propose(
            ONE_D,
            Objective.from_spec({"maximize": "accuracy"}),
            [],
            [],
            1,
            seed=0,
            settings=TWO_PHASE,
        )


def test_two_phase_finds_the_boundary_then_optimises_below_it():
    optimum = 0.5 ** (1 / 3)
    history, methods = [], []
    for _ in range(8):
        (proposal,) = propose(ONE_D, CONSTRAINED, history, [], 1, seed=0, settings=TWO_PHASE)
        methods.append(proposal.reason["method"])
        s = proposal.candidate.params["0.sparsity"]
        history.append(Observation(proposal.candidate, toy(s)))
    assert methods[:2] == ["sobol", "sobol"] and "level-set" in methods
    assert methods[-1] == "LogCEI" and history[-1] is not None
    best = history[best_feasible(history, CONSTRAINED)].candidate.params["0.sparsity"]
    assert optimum - 0.01 <= best <= optimum, (best, methods)
    phase2 = propose(ONE_D, CONSTRAINED, history, [], 2, seed=0, settings=TWO_PHASE)
    assert [p.reason["phase"] for p in phase2] == [2, 2]
    assert all(
        p.candidate.params["0.sparsity"] <= phase2[0].reason["upper_bound"]["0.sparsity"]
        for p in phase2
    )


def test_level_set_batch_spreads_with_pending_points():
    history = [Observation(Candidate("prune", {"0.sparsity": s}), toy(s)) for s in (0.1, 0.5, 0.95)]
    proposals = propose(ONE_D, CONSTRAINED, history, [], 3, seed=0, settings=TWO_PHASE)
    assert [p.reason["method"] for p in proposals] == ["level-set"] * 3
    values = sorted(p.candidate.params["0.sparsity"] for p in proposals)
    assert len(set(values)) == 3 and 0.5 < values[1] < 0.95
    assert all(math.isfinite(p.reason["acquisition_value"]) for p in proposals)


def test_string_choices_are_categorical_and_enumerated(fast):
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "prune+q",
                    "steps": [
                        {"op": "prune", "sparsity": {"min": 0.5, "max": 0.99}},
                        {"op": "quantize", "dtype": {"choices": ["float16", "bfloat16"]}},
                        {"op": "cluster", "bits": {"choices": [2, 4, 8]}},
                    ],
                },
                {"name": "fp16", "steps": [{"op": "quantize", "dtype": "float16"}]},
            ]
        }
    )
    assert space.categorical_columns == [1, 3]  # dtype and the strategy; bits stay ordered
    combos = space.fixed_features_list()
    assert len(combos) == 3 and {c[3] for c in combos} == {0.0, 1.0}
    objective = Objective.from_spec({"minimize": "size_bytes"})

    def metrics(c: Candidate) -> dict[str, float]:
        if c.strategy == "fp16":
            return {"size_bytes": 0.5}
        bf = c.params["1.dtype"] == "bfloat16"
        return {"size_bytes": (1 - c.params["0.sparsity"]) * c.params["2.bits"] + 0.1 * bf}

    history = []
    for _ in range(8):
        (p,) = propose(space, objective, history, [], 1, seed=2, settings=fast)
        history.append(Observation(p.candidate, metrics(p.candidate)))
    assert [o.candidate for o in history[-3:]] != []
    assert history[-1].metrics["size_bytes"] >= 0
    assert any(o.candidate.strategy == "prune+q" for o in history[5:])
