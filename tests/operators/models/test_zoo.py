"""The model zoo builds each architecture with the right shapes and rejects bad names/configs."""

import pytest
import torch

from operators.models.zoo import ARCHITECTURES, build_model

# the input each architecture takes with its default config; a new architecture must be added
DEFAULT_INPUTS = {
    "lenet-300-100": (1, 28, 28),
    "lenet-5": (1, 28, 28),
    "lenet-5-caffe": (1, 28, 28),
    "mlp": (784,),
    "vgg-cifar": (3, 32, 32),
    "resnet-cifar": (3, 32, 32),
}


def test_every_architecture_is_covered():
    assert set(ARCHITECTURES) == set(DEFAULT_INPUTS)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_each_architecture_builds_from_its_default_config_and_gives_logits(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, {})
    x = torch.randn(2, *DEFAULT_INPUTS[architecture])
    logits = model(x)  # in train mode, with batch statistics where there is BatchNorm
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


@pytest.mark.parametrize(
    ("architecture", "config", "input_shape", "num_classes"),
    [
        ("lenet-300-100", {"in_features": 64, "num_classes": 4}, (1, 8, 8), 4),
        ("lenet-5", {"in_channels": 3, "image_size": 32, "num_classes": 7}, (3, 32, 32), 7),
        ("lenet-5-caffe", {"in_channels": 3, "image_size": 32, "num_classes": 7}, (3, 32, 32), 7),
        ("mlp", {"in_features": 64, "hidden": [32, 16], "num_classes": 5}, (1, 8, 8), 5),
        ("mlp", {"in_features": 64, "hidden": []}, (64,), 10),
        ("vgg-cifar", {"in_channels": 1, "num_classes": 7, "width": 0.125}, (1, 32, 32), 7),
        (
            "resnet-cifar",
            {"depth": 8, "in_channels": 1, "num_classes": 4, "width": 0.5},
            (1, 32, 32),
            4,
        ),
    ],
)
def test_each_architecture_forwards_to_num_classes(architecture, config, input_shape, num_classes):
    model = build_model(architecture, config)
    assert model(torch.randn(3, *input_shape)).shape == (3, num_classes)


@pytest.mark.parametrize(
    ("config", "params"),
    [({"depth": 20}, 272_474), ({"depth": 56}, 855_770)],
)
def test_resnet_cifar_has_the_published_size(config, params):
    model = build_model("resnet-cifar", config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_and_resnet_options():
    vgg = build_model("vgg-cifar", {"in_channels": 1, "num_classes": 7, "width": 0.25})
    assert vgg.conv1.in_channels == 1 and vgg.conv8.out_channels == 128
    assert vgg(torch.zeros(1, 1, 32, 32)).shape == (1, 7)
    wide = build_model("resnet-cifar", {"depth": 20, "width": 2})
    assert wide.fc.in_features == 128
    with pytest.raises(ValueError, match="depth: must be 6n\\+2"):
        build_model("resnet-cifar", {"depth": 21})
    with pytest.raises(ValueError, match="width: must be a positive number"):
        build_model("vgg-cifar", {"width": 0})


def test_lenet_300_100_has_the_classic_layers():
    model = build_model("lenet-300-100", {})
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (300, 784),
        "fc1.bias": (300,),
        "fc2.weight": (100, 300),
        "fc2.bias": (100,),
        "fc3.weight": (10, 100),
        "fc3.bias": (10,),
    }


LENET_5_WEIGHTS = {
    "conv1.weight": (6, 1, 5, 5), "conv2.weight": (16, 6, 5, 5), "fc1.weight": (120, 400),
    "fc2.weight": (84, 120), "fc3.weight": (10, 84),
}  # fmt: skip
CAFFE_WEIGHTS = {  # Caffe's lenet_train_test.prototxt: 431,080 parameters
    "conv1.weight": (20, 1, 5, 5), "conv2.weight": (50, 20, 5, 5), "fc1.weight": (500, 800),
    "fc2.weight": (10, 500),
}  # fmt: skip
CAFFE_LAYERS = ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]


@pytest.mark.parametrize(
    ("architecture", "weights", "params", "layers"),
    [("lenet-5", LENET_5_WEIGHTS, 61_706, None),
     ("lenet-5-caffe", CAFFE_WEIGHTS, 431_080, CAFFE_LAYERS)],
)  # fmt: skip
def test_lenet_5_layouts(architecture, weights, params, layers):
    model = build_model(architecture, {})
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if "weight" in name}
    assert shapes == weights
    assert sum(p.numel() for p in model.parameters()) == params
    assert layers is None or [type(m).__name__ for m in model] == layers


def test_unknown_architecture_lists_the_allowed_ones():
    with pytest.raises(
        ValueError, match="unknown architecture 'resnet-9000'; allowed: lenet-300-100, lenet-5, lenet-5-caffe, mlp"
    ):
        build_model("resnet-9000", {})


def test_unknown_config_key_lists_the_allowed_keys():
    with pytest.raises(ValueError, match=r"'hidden'.*allowed: in_features, num_classes"):
        build_model("lenet-300-100", {"hidden": [10]})


@pytest.mark.parametrize(
    ("architecture", "config", "message"),
    [
        ("mlp", {"hidden": "12"}, "hidden"),
        ("mlp", {"hidden": [8, 0]}, r"hidden\[1\]"),
        ("lenet-300-100", {"num_classes": 2.5}, "num_classes"),
        ("lenet-5", {"image_size": 8}, "image_size"),
        ("lenet-5-caffe", {"image_size": 15}, "image_size"),
        ("mlp", [784], "config"),
    ],
)
def test_bad_config_values_name_the_key(architecture, config, message):
    with pytest.raises(ValueError, match=message):
        build_model(architecture, config)
