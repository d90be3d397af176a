"""Shared fixtures for the operators tests: small datasets that load in milliseconds."""

import pytest
import torch

from operators.datasets import Dataset, load_dataset


def random_dataset(
    n_train: int = 64,
    n_val: int = 32,
    shape: tuple = (1, 8, 8),
    num_classes: int = 3,
    seed: int = 0,
) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        x_train=torch.randn(n_train, *shape, generator=g),
        y_train=torch.randint(0, num_classes, (n_train,), generator=g),
        x_val=torch.randn(n_val, *shape, generator=g),
        y_val=torch.randint(0, num_classes, (n_val,), generator=g),
        num_classes=num_classes,
    )


@pytest.fixture
def tiny() -> Dataset:
    """64 train / 32 val random samples of shape (1, 8, 8), 3 classes."""
    return random_dataset()


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("builtin:digits")


@pytest.fixture
def make_dataset():
    """The random dataset factory, for tests that need other sizes or shapes."""
    return random_dataset
