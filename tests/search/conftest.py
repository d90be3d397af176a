"""Shared fixtures of the search tests: cheap settings, the small 1-D problem, and the
issue's noisy plateau (:func:`plateau_metrics`)."""

import pytest
import torch

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


#: Validation samples of the noisy toy below (the issue's MNIST split: SE 0.12 points at 98.5%).
VALIDATION_SAMPLES = 10_000


def plateau_drop(sparsity: float) -> float:
    """The true accuracy drop of the issue's landscape in 1-D: on a plateau inside the noise
    until sparsity 0.88, then rising slowly through the bound 0.01 (at 0.936)."""
    return 0.0055 + 0.08 * max(0.0, sparsity - 0.88) + 2.0 * max(0.0, sparsity - 0.95) ** 2


def plateau_ratio(sparsity: float) -> float:
    """The exact compression ratio of that landscape: 37x-39x at sparsity 0.899-0.907."""
    return 1.0 / (0.1732 * (1.0 - sparsity) + 0.0095)


def plateau_metrics(sparsity: float, generator: torch.Generator) -> dict[str, float]:
    """One trial of that landscape: the accuracy measured on ``VALIDATION_SAMPLES`` samples."""
    draws = torch.rand(VALIDATION_SAMPLES, generator=generator, dtype=torch.double)
    accuracy = float((draws < 0.985 - plateau_drop(sparsity)).sum()) / VALIDATION_SAMPLES
    return {
        "compression_ratio": plateau_ratio(sparsity),
        "accuracy": accuracy,
        "accuracy_drop": 0.985 - accuracy,
    }


def near_duplicates(sparsities: list[float], ratio_tolerance: float = 0.05) -> int:
    """Trials that bought nothing, as the issue counts them: an earlier trial's ratio is
    within ``ratio_tolerance`` of theirs and its true drop within one standard error."""
    se = (0.985 * 0.015 / VALIDATION_SAMPLES) ** 0.5
    return sum(
        any(
            abs(plateau_ratio(a) - plateau_ratio(b)) <= ratio_tolerance * plateau_ratio(b)
            and abs(plateau_drop(a) - plateau_drop(b)) <= se
            for b in sparsities[:i]
        )
        for i, a in enumerate(sparsities)
    )


@pytest.fixture(scope="session")
def tight() -> Objective:
    """Maximise ``compression_ratio`` subject to ``accuracy_drop <= 0.01`` (one point)."""
    return Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )


@pytest.fixture(scope="session")
def high_sparsity() -> SearchSpace:
    """One strength, ``0.sparsity`` in [0.5, 0.99]."""
    return SearchSpace.from_spec(
        {
            "strategies": [
                {"name": "prune", "steps": [{"op": "prune", "sparsity": {"min": 0.5, "max": 0.99}}]}
            ]
        }
    )
