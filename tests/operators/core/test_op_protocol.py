"""The op protocol: parameter checks name the parameter, every op selects layers with include /
exclude, the output layer is found, and ops that would fight over a layer are refused."""

import math

import pytest
import torch
from torch import nn

from operators.core.op import check_choice, check_int, check_number, output_layer
from operators.core.registry import OPS
from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: check_number("p", 1.0, 0, 1), r"^p: must be in \[0, 1\), got 1\.0$"),
        (lambda: check_number("p", math.nan, 0, 1), r"^p: must be a number in \[0, 1\)"),
        (lambda: check_number("p", True, 0, 1), r"^p: must be a number"),
        (lambda: check_number("p", 1.5, 0, 1, high_inclusive=True), r"^p: must be in \[0, 1\]"),
        (lambda: check_int("n", 2.0, 1), r"^n: must be a positive integer, got 2\.0$"),
        (lambda: check_int("n", 9, 1, 8), r"^n: must be an integer in \[1, 8\], got 9$"),
        (lambda: check_int("n", -1, 0), r"^n: must be an integer >= 0"),
        (lambda: check_choice("c", "x", ["a", "b"]), r"^c: must be one of a, b; got 'x'$"),
    ],
)
def test_parameter_checks_name_the_parameter_and_the_range(check, message):
    with pytest.raises(ValueError, match=message):
        check()


def test_parameter_checks_pass_valid_values_through():
    assert check_number("p", 0, 0, 1) == 0.0 and isinstance(check_number("p", 0, 0, 1), float)
    assert check_number("p", 1, 0, 1, high_inclusive=True) == 1.0
    assert check_int("n", 8, 1, 8) == 8 and check_choice("c", "b", ["a", "b"]) == "b"


def test_every_op_takes_include_and_exclude():
    assert len(OPS) >= 10
    for op in OPS.values():
        assert {"include", "exclude"} <= set(op.parameter_names()), op.name


def test_include_and_exclude_select_layers_by_module_name(lenet):
    only_fc1 = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5, "include": "^fc1$"}])
    assert set(only_fc1.masks) == {"fc1.weight"}
    assert not (only_fc1.model.fc2.weight == 0).any()
    not_fc3 = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5, "exclude": "fc3"}])
    assert set(not_fc3.masks) == {"fc1.weight", "fc2.weight"}
    both = apply_strategy(
        lenet, [{"op": "prune", "sparsity": 0.5, "include": "fc", "exclude": "2"}]
    )
    assert set(both.masks) == {"fc1.weight", "fc3.weight"}


def test_a_packing_op_packs_only_the_selected_layers():
    cm = apply_strategy(build_model(*MLP), [{"op": "cluster", "bits": 2, "exclude": "fc3"}])
    assert set(cm.packing) == {"fc1", "fc2"}
    assert len(torch.unique(cm.model.fc1.weight)) <= 4
    assert len(torch.unique(cm.model.fc3.weight)) > 4
    assert isinstance(cm.model.fc3, nn.Linear)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"op": "prune", "sparsity": 0.5, "include": "conv"},
            "prune: include/exclude selected no Linear or Conv layer",
        ),
        (
            {"op": "cluster", "bits": 2, "include": "nothing"},
            "cluster: include/exclude selected no Linear or Conv2d",
        ),
    ],
)
def test_a_selection_of_no_layer_is_refused(lenet, step, message):
    with pytest.raises(ValueError, match=message):
        apply_strategy(lenet, [step])


def test_a_layer_already_packed_by_another_op_is_refused():
    with pytest.raises(ValueError, match="quantize: fc1 is already packed as cluster"):
        apply_strategy(
            build_model(*MLP), [{"op": "cluster", "bits": 2}, {"op": "quantize", "dtype": "int8"}]
        )


def test_structural_ops_must_come_first(lenet):
    with pytest.raises(ValueError, match="neuron_prune: structural pruning must come before"):
        apply_strategy(
            lenet, [{"op": "prune", "sparsity": 0.5}, {"op": "neuron_prune", "ratio": 0.5}]
        )


@pytest.mark.parametrize(
    ("architecture", "config", "name"),
    [
        ("lenet-300-100", {}, "fc3"),
        ("lenet-5", {}, "fc3"),
        ("resnet-cifar", {"depth": 8, "width": 0.25}, "fc"),
    ],
)
def test_the_output_layer_is_the_last_weight_layer(architecture, config, name):
    model = build_model(architecture, config)
    assert output_layer(model) is model.get_submodule(name)
    assert output_layer(nn.Sequential(nn.ReLU())) is None
