"""``neuron_prune`` / ``filter_prune``: ``ratio`` of each selected layer's channels removed,
the output layer never, only the selected layers, and the report names what went."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model


def widths(model, kind=torch.nn.Linear):
    attr = "out_features" if kind is torch.nn.Linear else "out_channels"
    return [getattr(m, attr) for m in model.modules() if isinstance(m, kind)]


def test_neuron_prune_removes_the_ratio_of_every_layer_but_the_output(lenet):
    cm = apply_strategy(lenet, [{"op": "neuron_prune", "ratio": 0.5}])
    assert widths(cm.model) == [150, 50, 10]
    removed = cm.report[0]["removed_channels"]
    assert {name: len(idx) for name, idx in removed.items()} == {"fc1": 150, "fc2": 50}
    assert all(0 <= i < 300 for i in removed["fc1"])
    assert cm.report[0]["params"] == sum(p.numel() for p in cm.model.parameters())
    assert cm.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_filter_prune_removes_filters_and_only_of_selected_layers():
    model = build_model("lenet-5", {})
    cm = apply_strategy(model, [{"op": "filter_prune", "ratio": 0.5}])
    assert widths(cm.model, torch.nn.Conv2d) == [3, 8]
    assert widths(cm.model) == [120, 84, 10] and cm.model.fc1.in_features == 8 * 5 * 5
    cm = apply_strategy(model, [{"op": "filter_prune", "ratio": 0.5, "include": "conv2"}])
    assert widths(cm.model, torch.nn.Conv2d) == [6, 8]
    cm = apply_strategy(model, [{"op": "neuron_prune", "ratio": 0.25, "exclude": "fc1"}])
    assert widths(cm.model) == [120, 63, 10]


def test_selecting_only_the_output_layer_is_refused(lenet):
    with pytest.raises(
        ValueError, match="neuron_prune: include/exclude selected no prunable layer"
    ):
        apply_strategy(lenet, [{"op": "neuron_prune", "ratio": 0.5, "include": "fc3"}])


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"op": "filter_prune", "ratio": 0.5, "criterion": "l3"},
            "criterion: must be one of l1, l2, ga",
        ),
        ({"op": "neuron_prune", "ratio": 1.0}, r"ratio: must be in \[0, 1\)"),
        ({"op": "neuron_prune"}, "ratio: required by neuron_prune"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
