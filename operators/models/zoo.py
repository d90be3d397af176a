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
- ``lenet-5-caffe`` (in_channels=1, num_classes=10, image_size=28): Caffe's LeNet-5, the one
  the compression papers report (Deep Compression, Condensa, ...): conv1 20@5x5 - maxpool 2 -
  conv2 50@5x5 - maxpool 2 - fc1 500 - ReLU - fc2 (431,080 parameters at 28x28x1, no
  activation after the convolutions, as in Caffe's ``lenet_train_test.prototxt``).
  ``image_size`` must be at least 16.
- ``mlp`` (in_features=784, hidden=[256], num_classes=10): flatten, then Linear layers
  ``fc1 .. fcN`` with ReLU between them.
- ``vgg-cifar`` (in_channels=3, num_classes=10, width=1.0): VGG-11 for 32x32 images, eight
  3x3 conv-BatchNorm-ReLU layers ``conv1..conv8`` of 64-128-256-256-512-512-512-512 channels
  (times ``width``) with five 2x2 max-pools, global average pooling, then ``fc``.
- ``resnet-cifar`` (depth=20, in_channels=3, num_classes=10, width=1.0): He et al. 2016's
  CIFAR ResNet (depth 6n+2: 20, 32, 44, 56, 110), three stages ``layer1..layer3`` of n basic
  blocks with 16-32-64 channels (times ``width``), 1x1 conv + BatchNorm shortcuts where the
  shape changes, global average pooling, then ``fc``.
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


def lenet_5_caffe(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """Caffe's LeNet-5 (20 and 50 filters of 5x5, unpadded, then 500-classes) for square images."""
    _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    _positive_int("image_size", image_size)
    side = ((image_size - 4) // 2 - 4) // 2  # conv1 (-4), pool, conv2 (-4), pool
    if side < 1:
        raise ValueError(f"image_size: must be at least 16 for lenet-5-caffe, got {image_size}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [
            ("conv1", nn.Conv2d(in_channels, 20, kernel_size=5)),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(20, 50, kernel_size=5)),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
        ]
    )
    layers.update(_linear_stack([50 * side * side, 500, num_classes]))
    return nn.Sequential(layers)


def _channels(base: int, width: Any) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width: must be a positive number, got {width!r}")
    return max(1, round(base * width))


def _conv_bn_relu(layers: OrderedDict, i: int, c_in: int, c_out: int) -> None:
    layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
    layers[f"relu{i}"] = nn.ReLU()


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg_cifar(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """VGG-11 with BatchNorm for CIFAR-sized images (any size >= 32 works: global pooling)."""
    c_in = _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    conv = pool = 0
    for item in VGG11:
        if item == "M":
            pool += 1
            layers[f"pool{pool}"] = nn.MaxPool2d(2)
        else:
            conv += 1
            _conv_bn_relu(layers, conv, c_in, _channels(item, width))
            c_in = _channels(item, width)
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(c_in, num_classes)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(c_out),
                )
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet_cifar(
    depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: float = 1.0
) -> nn.Module:
    """The CIFAR ResNet of depth 6n+2 (ResNet-20, -56, ...)."""
    _positive_int("depth", depth)
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth: must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    c_in = _positive_int("in_channels", in_channels)
    _positive_int("num_classes", num_classes)
    stem = _channels(16, width)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(c_in, stem, 3, padding=1, bias=False), bn1=nn.BatchNorm2d(stem),
        relu1=nn.ReLU(),
    )  # fmt: skip
    c_in = stem
    for stage, base in enumerate((16, 32, 64), start=1):
        c_out = _channels(base, width)
        blocks = [BasicBlock(c_in if i == 0 else c_out, c_out, 2 if (i == 0 and stage > 1) else 1)
                  for i in range(n)]  # fmt: skip
        layers[f"layer{stage}"] = nn.Sequential(*blocks)
        c_in = c_out
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(c_in, num_classes)
    return nn.Sequential(layers)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lenet-300-100": lenet_300_100,
    "lenet-5": lenet_5,
    "lenet-5-caffe": lenet_5_caffe,
    "mlp": mlp,
    "vgg-cifar": vgg_cifar,
    "resnet-cifar": resnet_cifar,
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
