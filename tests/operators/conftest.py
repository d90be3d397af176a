"""Shared fixtures for the operators tests (they apply to every subfolder): small datasets
that load in milliseconds, the models most tests compress, and the checks several units share.
"""

import pytest
import torch

from operators.core.model import CompressedModel
from operators.core.strategy import apply_strategy, validate_steps
from operators.data.datasets import Dataset, load_dataset
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.models.zoo import build_model
from operators.runtime import packed_model
from operators.train.loop import train

MLP_DIGITS = ("mlp", {"in_features": 64, "hidden": [32, 16], "num_classes": 10})


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


@pytest.fixture
def tiny_flat() -> Dataset:
    """Like ``tiny`` with flat samples of 64 features."""
    return random_dataset(shape=(64,))


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("builtin:digits")


@pytest.fixture
def make_dataset():
    """The random dataset factory, for tests that need other sizes or shapes."""
    return random_dataset


@pytest.fixture
def lenet() -> torch.nn.Module:
    """A freshly initialised (seeded) lenet-300-100 with its default config."""
    torch.manual_seed(0)
    return build_model("lenet-300-100", {})


@pytest.fixture(scope="session")
def trained_mlp(digits) -> torch.nn.Module:
    """An MLP 64-32-16-10 trained on digits (about 90% validation accuracy), in eval mode.
    Shared by the whole session: compress copies of it (apply_strategy), never train it."""
    torch.manual_seed(0)
    model = build_model(*MLP_DIGITS)
    train(model, digits, epochs=5, lr=3e-3, batch_size=64, seed=0)
    return model.eval()


def masks_hold(cm: CompressedModel) -> bool:
    """True if every masked-out weight of ``cm`` is exactly zero."""
    params = dict(cm.model.named_parameters())
    return all(bool((params[name].detach()[~mask] == 0).all()) for name, mask in cm.masks.items())


@pytest.fixture
def pruned_are_zero():
    """``pruned_are_zero(cm)``: True if every masked-out weight of ``cm`` is exactly zero."""
    return masks_hold


# (architecture, config, per-sample input shape) of the two small models packed-kind tests use
SMALL_MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10}, (64,))
SMALL_LENET5 = ("lenet-5", {}, (1, 28, 28))


@pytest.fixture(params=[SMALL_MLP, SMALL_LENET5], ids=["mlp", "lenet5"])
def small_arch(request) -> tuple[str, dict, tuple]:
    """Each of a small MLP and LeNet-5: ``(architecture, config, input shape)``."""
    return request.param


@pytest.fixture
def assert_packs_exactly(tmp_path):
    """``assert_packs_exactly(arch, steps, kind=None) -> (cm, packed)``: ``steps`` applied to a
    seeded ``arch`` (as ``small_arch`` gives it); the packed model and the checkpoint (loaded
    packed and dense) compute what ``cm.model`` does, the dense load is bit-exact, and every
    packed layer is a ``kind`` (when given)."""

    def check(arch: tuple[str, dict, tuple], steps: list[dict], kind: type | None = None):
        architecture, config, shape = arch
        torch.manual_seed(0)
        cm = apply_strategy(build_model(architecture, config), steps)
        x = torch.randn(7, *shape)
        with torch.no_grad():
            expected = cm.model.eval()(x)
            packed = packed_model(cm, runtime="packed")
            torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-6)
        path = tmp_path / f"{architecture}.safetensors"
        save_checkpoint(cm, path, architecture=architecture, config=config)
        for runtime in ("packed", "dense"):
            loaded, _ = load_checkpoint(path, runtime=runtime)
            with torch.no_grad():
                torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
        dense, _ = load_checkpoint(path, runtime="dense")
        weights = dict(cm.model.named_parameters())
        for key, value in dense.state_dict().items():
            assert torch.equal(value, weights[key].detach()), key  # bit-exact (-0.0 == 0.0)
        if kind is not None:
            assert cm.packing and all(isinstance(packed.get_submodule(n), kind) for n in cm.packing)
        return cm, packed

    return check


@pytest.fixture
def assert_invalid_step():
    """``assert_invalid_step(step, message)``: validating ``[step]`` fails with a message that
    starts ``steps[0].`` and then matches the regular expression ``message``."""

    def check(step: dict, message: str) -> None:
        with pytest.raises(ValueError, match=r"^steps\[0\]\." + message):
            validate_steps([step])

    return check
