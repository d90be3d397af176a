"""``prune``: magnitude pruning hits the exact count, keeps the largest weights, per scope."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.prune.magnitude import magnitude_masks

LINEAR_WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def zeros(tensor: torch.Tensor) -> int:
    return int((tensor == 0).sum())


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "prune", "sparsity": 1.0}, r"sparsity: must be in \[0, 1\), got 1\.0$"),
        ({"op": "prune", "sparsity": -0.1}, r"sparsity: must be in \[0, 1\)"),
        ({"op": "prune", "sparsity": "0.5"}, r"sparsity: must be a number"),
        ({"op": "prune", "sparsity": True}, r"sparsity: must be a number"),
        ({"op": "prune", "sparsity": 0.5, "scope": "net"}, r"scope: must be one of global, layer"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)


def test_global_prune_hits_the_exact_count_and_keeps_the_largest(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}])
    weights = [cm.model.get_parameter(n) for n in LINEAR_WEIGHTS]
    total = sum(w.numel() for w in weights)
    assert sum(zeros(w) for w in weights) == round(0.9 * total)
    kept = torch.cat([w[w != 0].abs() for w in weights])
    original = torch.cat([lenet.get_parameter(n).detach().flatten() for n in LINEAR_WEIGHTS])
    pruned = original[torch.cat([(w == 0).flatten() for w in weights])].abs()
    assert pruned.max() <= kept.min()
    assert cm.report[0]["sparsity"] == pytest.approx(0.9, abs=1 / total)
    for name in LINEAR_WEIGHTS:  # kept weights keep their values
        mask = cm.masks[name]
        assert torch.equal(cm.model.get_parameter(name)[mask], lenet.get_parameter(name)[mask])
    for name in ("fc1.bias", "fc2.bias", "fc3.bias"):
        assert torch.equal(cm.model.get_parameter(name), lenet.get_parameter(name))


def test_ties_are_broken_deterministically_with_an_exact_count():
    tensors = [torch.ones(7, 3), torch.ones(5)]
    first, second = magnitude_masks(tensors, 0.5), magnitude_masks(tensors, 0.5)
    assert sum(int((~m).sum()) for m in first) == round(0.5 * 26)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_layer_scope_gives_each_layer_the_sparsity(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.7, "scope": "layer"}])
    for name in LINEAR_WEIGHTS:
        weight = cm.model.get_parameter(name)
        assert zeros(weight) == round(0.7 * weight.numel())
        assert cm.report[0]["layers"][name] == pytest.approx(0.7, abs=1e-3)
        original = lenet.get_parameter(name).detach().abs()
        assert original[weight == 0].max() <= original[weight != 0].min()


def test_conv_weights_are_pruned_but_not_biases():
    model = build_model("lenet-5", {})
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5, "scope": "layer"}])
    assert zeros(cm.model.conv1.weight) == round(0.5 * 150)
    assert "conv1.bias" not in cm.masks


def test_successive_prunes_compose(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}, {"op": "prune", "sparsity": 0.8}])
    assert cm.report[1]["sparsity"] == pytest.approx(0.8, abs=1e-5)
    first = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}])
    for name in LINEAR_WEIGHTS:
        assert not (cm.masks[name] & ~first.masks[name]).any()  # pruned stays pruned
