"""``nm_prune``: exactly n of every m consecutive weights kept, the largest ones."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model


def test_nm_pattern_is_exact():
    torch.manual_seed(0)
    model = build_model("lenet-300-100", {"in_features": 64, "num_classes": 3})
    cm = apply_strategy(model, [{"op": "nm_prune", "n": 2, "m": 4}])
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        groups = cm.model.get_parameter(name).detach().reshape(-1, 4)
        assert ((groups != 0).sum(1) == 2).all(), name
        original = model.get_parameter(name).detach().reshape(-1, 4).abs()
        kept = cm.masks[name].reshape(-1, 4)
        smallest_kept = original.masked_fill(~kept, torch.inf).min(1).values
        largest_dropped = original.masked_fill(kept, -1.0).max(1).values
        assert (smallest_kept >= largest_dropped).all(), name


def test_layers_whose_rows_do_not_split_into_groups_are_skipped():
    cm = apply_strategy(build_model("lenet-5", {}), [{"op": "nm_prune", "n": 1, "m": 4}])
    # conv1 rows hold 1*5*5 = 25 weights and conv2 rows 6*5*5 = 150: not multiples of 4
    assert cm.report[0]["skipped"] == ["conv1.weight", "conv2.weight"]
    assert cm.report[0]["layers"] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert set(cm.masks) == set(cm.report[0]["layers"])
    with pytest.raises(ValueError, match="no selected layer has a reduction length divisible by 4"):
        apply_strategy(build_model("lenet-5", {}), [{"op": "nm_prune", "m": 4, "include": "conv"}])


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "nm_prune", "n": 4, "m": 4}, "n: must be smaller than m=4, got 4"),
        ({"op": "nm_prune", "n": 0}, "n: must be a positive integer"),
        ({"op": "nm_prune", "m": 2.5}, "m: must be a positive integer"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
