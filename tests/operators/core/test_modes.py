"""eval_mode / train_mode: the model in that mode inside the block, its mode given back after,
even when the block raises; ``quiet`` silences warnings inside."""

import warnings

import pytest
from torch import nn

from operators.core.modes import eval_mode, train_mode


@pytest.mark.parametrize("was_training", [True, False])
def test_the_mode_is_restored_after_the_block_even_on_errors(was_training):
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train(was_training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training is was_training and model[1].training is was_training
    with pytest.raises(RuntimeError), train_mode(model):
        assert model.training and model[1].training
        raise RuntimeError
    assert model.training is was_training


def test_quiet_silences_warnings_only_inside():
    model = nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with eval_mode(model, quiet=True):
            warnings.warn("inside", stacklevel=1)
        warnings.warn("outside", stacklevel=1)
    assert [str(w.message) for w in caught] == ["outside"]
