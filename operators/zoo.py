"""The model zoo: the architectures a user can register, built from a name and a config.

A registered model is ``(architecture, config, weights)``. The checkpoint loader rebuilds the
module with :func:`build_model` and fills in the weights, so no pickled module is ever needed.

Every architecture is an ``nn.Sequential`` with named children (``fc1``, ``conv1``, ...), so
parameter names are stable and readable (``fc1.weight``) and the ``include`` / ``exclude``
regular expressions of the compression ops have something meaningful to match.

Architectures (config keys and defaults in brackets):

- ``lenet-300-100`` (in_features=784, num_classes=10): flatten, Linear 784-300-100-10, ReLU.
- ``lenet-5`` (in_channels=1, num_classes=10, image_size=28): the LeCun et al. 1998 layout,
  conv1 6@5x5 (padding 2) - ReLU - maxpool 2 - conv2 16@5x5 - ReLU - maxpool 2 -
  fc1 120 - ReLU - fc2 84 - ReLU - fc3. ``image_size`` must be at least 12.
- ``mlp`` (in_features=784, hidden=[256], num_classes=10): flatten, then Linear layers
  ``fc1 .. fcN`` with ReLU between them.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from torch import nn


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def _linear_stack(sizes: Sequence[int]) -> OrderedDict[str, nn.Module]:
    """``fc1, relu1, fc2, ...`` for consecutive layer widths; no activation after the last."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (fan_in, fan_out) in enumerate(pairwise(sizes), start=1):
        layers[f"fc{i}"] = nn.Linear(fan_in, fan_out)
        if i < len(sizes) - 1:
            layers[f"relu{i}"] = nn.ReLU()
    return layers


def mlp(in_features: int = 784, hidden: Sequence[int] = (256,), num_classes: int = 10) -> nn.Module:
    """A multilayer perceptron that flattens its input: in_features - hidden... - num_classes."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden: must be a list of positive integers, got {hidden!r}")
    sizes = [_positive_int("in_features", in_features)]
    sizes += [_positive_int(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
    sizes.append(_positive_int("num_classes", num_classes))
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), *_linear_stack(sizes).items()]))


def lenet_300_100(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """LeNet-300-100: the MLP 784-300-100-10 used throughout the pruning literature."""
    return mlp(in_features=in_features, hidden=(300, 100), num_classes=num_classes)


def lenet_5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """LeNet-5 (6 and 16 filters of 5x5, then 120-84-classes) for square images."""
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    _positive_int("image_size", image_size)
    side = (image_size // 2 - 4) // 2  # conv1 keeps the size (padding 2), pool, conv2 (-4), pool
    if side < 1:
        raise ValueError(f"image_size: must be at least 12 for lenet-5, got {image_size}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)),
            ("relu_c1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(6, 16, kernel_size=5)),
            ("relu_c2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
        ]
    )
    layers.update(_linear_stack([16 * side * side, 120, 84, num_classes]))
    return nn.Sequential(layers)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet-300-100": lenet_300_100,
    "lenet-5": lenet_5,
    "mlp": mlp,
}


def config_keys(architecture: str) -> list[str]:
    """The config keys an architecture accepts (raises ValueError for an unknown name)."""
    factory = _factory(architecture)
    return list(inspect.signature(factory).parameters)


def _factory(architecture: str) -> Callable[..., nn.Module]:
    try:
        return ARCHITECTURES[architecture]
    except (KeyError, TypeError):
        allowed = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown architecture {architecture!r}; allowed: {allowed}") from None


def build_model(architecture: str, config: dict) -> nn.Module:
    """Build a freshly initialised model of ``architecture`` with keyword arguments ``config``.

    Raises ValueError naming the architecture or the config key that is wrong, and listing
    what is allowed.
    """
    factory = _factory(architecture)
    if not isinstance(config, dict):
        raise ValueError(f"config: must be an object of keyword arguments, got {config!r}")
    allowed = config_keys(architecture)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(
            f"config: unknown key(s) {', '.join(map(repr, unknown))} for {architecture}; "
            f"allowed: {', '.join(allowed)}"
        )
    return factory(**config)
