"""Shared fixtures of the search tests: cheap settings and the small 1-D problem."""

import pytest

from search import Objective, SearchSettings, SearchSpace


@pytest.fixture(scope="session")
def fast() -> SearchSettings:
    """Cheaper acquisition optimisation for tests that check behaviour (methods, pending
    points, categorical columns, failures), not search quality or production speed."""
    return SearchSettings(num_restarts=2, raw_samples=64, mc_samples=32, maxiter=30, fit_maxiter=40)


@pytest.fixture(scope="session")
def one_d() -> SearchSpace:
    """One strategy with one strength: ``0.sparsity`` in [0, 1]."""
    return SearchSpace.from_spec(
        {
            "strategies": [
                {"name": "prune", "steps": [{"op": "prune", "sparsity": {"min": 0.0, "max": 1.0}}]}
            ]
        }
    )


@pytest.fixture(scope="session")
def constrained() -> Objective:
    """Maximise ``compression_ratio`` subject to ``accuracy_drop <= 0.5``."""
    return Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.5}]}
    )
