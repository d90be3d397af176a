"""The training loop: fractional epochs, seeding, cancellation, progress, optimizers."""

import pytest
import torch

from operators.training import Cancelled, train
from operators.zoo import build_model


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", {"in_features": 64, "hidden": [16], "num_classes": 3})


@pytest.mark.parametrize(("epochs", "steps"), [(0, 0), (0.5, 2), (1, 4), (2.5, 10)])
def test_fractional_epochs_run_that_many_batches(tiny, epochs, steps):
    counted = []
    train(small_model(), tiny, epochs=epochs, batch_size=16, after_step=lambda: counted.append(1))
    assert len(counted) == steps


def test_same_seed_gives_identical_weights(tiny):
    a, b, c = small_model(), small_model(), small_model()
    train(a, tiny, epochs=2, batch_size=16, seed=3)
    train(b, tiny, epochs=2, batch_size=16, seed=3)
    train(c, tiny, epochs=2, batch_size=16, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a.parameters(), c.parameters(), strict=True))


def test_should_stop_raises_cancelled(tiny):
    with pytest.raises(Cancelled):
        train(small_model(), tiny, epochs=5, batch_size=16, should_stop=lambda: True)


def test_progress_rises_to_one(tiny):
    seen = []
    train(small_model(), tiny, epochs=12, batch_size=16, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 1


def test_training_reduces_the_loss_and_restores_the_mode(tiny):
    model = small_model().eval()
    x, y = tiny.x_train, tiny.y_train
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    train(model, tiny, epochs=20, batch_size=16, lr=1e-2, optimizer="sgd")
    assert torch.nn.functional.cross_entropy(model(x), y).item() < before
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"optimizer": "lbfgs"}, "optimizer: unknown 'lbfgs'; allowed: adam, adamw, sgd"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_arguments_are_refused(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(small_model(), tiny, **kwargs)
