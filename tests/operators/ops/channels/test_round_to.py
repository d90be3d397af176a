"""``round_to`` on channel removal: kept widths a multiple of it, and the default space asks
for it only on CNNs wide enough for torch-pruning's rounding to behave."""

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.channels.graph import channel_round_to
from operators.train.default_space import default_search_space


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_filter_prune_keeps_widths_a_multiple_of_round_to():
    model = build_model("vgg-cifar", {}).eval()
    cm = apply_strategy(model, [{"op": "filter_prune", "ratio": 0.41, "round_to": 8}],
                        example_input=torch.randn(1, 3, 32, 32))  # fmt: skip
    widths = conv_widths(cm.model)
    assert all(w % 8 == 0 for w in widths) and sum(widths) < sum(conv_widths(model))


def test_round_to_is_refused_with_the_ga_and_out_of_range():
    with pytest.raises(ValueError, match="round_to works with criterion l1 or l2"):
        apply_strategy(build_model("vgg-cifar", {}),
                       [{"op": "filter_prune", "ratio": 0.3, "criterion": "ga", "round_to": 8}])  # fmt: skip
    with pytest.raises(ValueError, match="round_to"):
        apply_strategy(build_model("vgg-cifar", {}), [{"op": "filter_prune", "ratio": 0.3, "round_to": 0}])


def test_the_default_space_rounds_filters_only_on_wide_cnns():
    def filters_step(name):
        space = default_search_space(build_model(name, {}))
        return next(s for s in space["strategies"] if s["name"] == "filters+fp16")["steps"][0]

    assert channel_round_to(build_model("vgg-cifar", {})) == 8
    assert filters_step("vgg-cifar")["round_to"] == 8
    assert "round_to" not in filters_step("lenet-5")
