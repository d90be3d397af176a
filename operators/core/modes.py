"""Running a model in train or eval mode for a while and giving it back in the mode it had."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def mode(model: nn.Module, training: bool, *, quiet: bool = False) -> Iterator[nn.Module]:
    """``model`` in train (``training``) or eval mode inside the block, its mode restored after.

    ``quiet`` also silences warnings inside (tracing libraries such as torch-pruning warn).
    """
    was_training = model.training
    model.train(training)
    try:
        if quiet:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield model
        else:
            yield model
    finally:
        model.train(was_training)


def eval_mode(model: nn.Module, *, quiet: bool = False):
    """:func:`mode` in eval mode: ``with eval_mode(model): ...``."""
    return mode(model, False, quiet=quiet)


def train_mode(model: nn.Module):
    """:func:`mode` in train mode: ``with train_mode(model): ...``."""
    return mode(model, True)
