"""Shared fixtures of the search tests."""

import pytest

from search import SearchSettings


@pytest.fixture(scope="session")
def fast() -> SearchSettings:
    """Cheaper acquisition optimisation for tests that check behaviour (methods, pending
    points, categorical columns, failures), not search quality or production speed."""
    return SearchSettings(num_restarts=2, raw_samples=64, mc_samples=32, maxiter=30, fit_maxiter=40)
