"""Strategies: step validation names the step and parameter, ops apply in order to a copy of
the model, Compose is the same as a list of steps, and the example input is inferred."""

import pytest
import torch
from torch import nn

from operators.core.strategy import (
    Compose,
    apply_strategy,
    infer_example,
    parse_steps,
    validate_steps,
)
from operators.models.zoo import build_model
from operators.ops.prune.magnitude import Prune
from operators.ops.quantize.op import Quantize


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [{"op": "quantize"}, {"op": "foo"}],
            r"^steps\[1\]\.op: unknown op 'foo'; allowed: prune, block_prune, nm_prune, quantize, ",
        ),
        ([{"op": 3}], r"^steps\[0\]\.op: unknown op 3"),
        ([{"sparsity": 0.5}], r"^steps\[0\]\.op: required"),
        ([{"op": "prune"}], r"^steps\[0\]\.sparsity: required by prune"),
        (
            [{"op": "prune", "sparsity": 0.5, "ratio": 2}],
            r"^steps\[0\]\.ratio: unknown parameter of prune; allowed: include, exclude, sparsity, scope",
        ),
        (
            [{"op": "quantize"}, {"op": "prune", "sparsity": 0.5, "include": "fc["}],
            r"^steps\[1\]\.include: invalid regular expression",
        ),
        ([{"op": "cluster", "bits": 2, "exclude": 5}], r"^steps\[0\]\.exclude: must be a regular"),
        (["prune"], r"^steps\[0\]: must be an object"),
        ({"op": "prune"}, r"^steps: must be a list"),
    ],
)
def test_invalid_steps_name_the_step_and_parameter(steps, message):
    with pytest.raises(ValueError, match=message):
        validate_steps(steps)


def test_valid_steps_parse_into_their_ops_in_order():
    ops = parse_steps(
        [
            {"op": "prune", "sparsity": 0.5, "scope": "layer", "exclude": "fc3"},
            {"op": "quantize", "dtype": "bfloat16", "include": "fc"},
        ]
    )
    assert ops == [
        Prune(sparsity=0.5, scope="layer", exclude="fc3"),
        Quantize(dtype="bfloat16", include="fc"),
    ]


def test_input_model_is_left_untouched_and_becomes_the_teacher(lenet):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}, {"op": "quantize"}])
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    assert cm.model is not lenet and cm.teacher is lenet  # the uncompressed model, for kd
    assert [op.name for op in cm.ops] == ["prune", "quantize"]
    assert [entry["op"] for entry in cm.report] == ["prune", "quantize"]
    assert cm.report[0]["params"] == {
        "include": None, "exclude": None, "sparsity": 0.9, "scope": "global"
    }  # fmt: skip


def test_compose_of_op_objects_equals_the_steps(lenet):
    steps = [{"op": "prune", "sparsity": 0.7, "scope": "layer"}, {"op": "quantize"}]
    from_steps = apply_strategy(lenet, steps)
    composed = Compose([Prune(sparsity=0.7, scope="layer"), Quantize()]).apply(lenet)
    assert composed.report == from_steps.report
    assert all(torch.equal(composed.masks[n], m) for n, m in from_steps.masks.items())
    for a, b in zip(composed.model.parameters(), from_steps.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("architecture", "config", "shape"),
    [
        ("lenet-300-100", {"in_features": 64}, (1, 64)),
        ("lenet-5", {}, (1, 1, 28, 28)),
        ("lenet-5", {"in_channels": 3, "image_size": 16}, (1, 3, 16, 16)),
        ("vgg-cifar", {"width": 0.125}, (1, 3, 32, 32)),
    ],
)
def test_the_example_input_is_inferred_from_the_first_layer(architecture, config, shape):
    model = build_model(architecture, config)
    x = infer_example(model)
    assert x.shape == shape and not x.any()
    assert model.training  # the forward passes that probe shapes leave the mode alone
    assert apply_strategy(model, []).input_shape == list(shape[1:])


def test_no_example_input_without_a_weight_layer():
    assert infer_example(nn.Sequential(nn.ReLU())) is None
