"""The training loop: fractional epochs, seeding, cancellation, progress, optimizers."""

import pytest
import torch

from operators.models.zoo import build_model
from operators.train.loop import Cancelled, train


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


def test_should_stop_raises_cancelled_at_the_next_poll(tiny):
    model, steps, polls = small_model(), [], []

    def stop() -> bool:
        polls.append(len(steps))
        return len(polls) == 3  # polled at the start of each epoch of 4 batches

    with pytest.raises(Cancelled, match="training stopped at step 8 of 20"):
        train(model, tiny, epochs=5, batch_size=16, should_stop=stop,
              after_step=lambda: steps.append(1))  # fmt: skip
    assert polls == [0, 4, 8] and len(steps) == 8
    assert model.training  # the mode is restored on cancellation too


def test_a_loss_and_an_optimizer_can_be_given(tiny):
    model, seen, built = small_model(), [], []

    def loss(m, x, y):
        seen.append((m, x.shape, y.shape))
        return m(x).pow(2).mean()  # drives the logits to zero, whatever the labels

    def build(m):
        built.append(torch.optim.SGD(m.parameters(), lr=0.1))
        return built[0]

    x = tiny.x_train
    before = model(x).pow(2).mean().item()
    train(model, tiny, epochs=2, batch_size=16, loss=loss, build_optimizer=build)
    assert len(seen) == 8 and all(
        m is model and xs == (16, 1, 8, 8) and ys == (16,) for m, xs, ys in seen
    )
    assert model(x).pow(2).mean().item() < 0.75 * before
    assert len(built) == 1 and built[0].param_groups[0]["lr"] == 0.1


def test_cosine_schedule_anneals_the_learning_rate_to_zero(tiny):
    built = []

    def build(m):
        built.append(torch.optim.SGD(m.parameters(), lr=0.1))
        return built[0]

    lrs = []
    train(small_model(), tiny, epochs=2, batch_size=16, schedule="cosine", build_optimizer=build,
          after_step=lambda: lrs.append(built[0].param_groups[0]["lr"]))  # fmt: skip
    assert lrs == sorted(lrs, reverse=True) and len(lrs) == 8
    assert lrs[0] < 0.1 and lrs[-1] == pytest.approx(0, abs=1e-12)


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
        ({"epochs": float("inf")}, "epochs: must be a finite number"),
        ({"schedule": "step"}, "schedule: unknown 'step'; allowed: constant, cosine"),
    ],
)
def test_bad_arguments_are_refused(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(small_model(), tiny, **kwargs)
