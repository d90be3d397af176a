"""Masked fine-tuning holds the compression: pruned weights stay exactly zero under momentum
and weight decay (plain training does not), storage dtypes hold, and ``none`` changes nothing."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.train.finetune import finetune
from operators.train.loop import train


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("mlp", {"in_features": 64, "hidden": [32], "num_classes": 3})


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"), [("sgd", 1e-2), ("adam", 0.0), ("adamw", 1e-2)]
)
def test_masked_entries_stay_exactly_zero(model, tiny, pruned_are_zero, optimizer, weight_decay):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.8}])
    before = cm.model.fc1.weight.detach().clone()
    finetune(
        cm, tiny, epochs=3, batch_size=16, lr=0.05, optimizer=optimizer, weight_decay=weight_decay
    )
    assert pruned_are_zero(cm)
    kept = cm.masks["fc1.weight"]
    assert not torch.equal(cm.model.fc1.weight[kept], before[kept])  # it did train


def test_without_enforce_momentum_revives_pruned_weights(model, tiny, pruned_are_zero):
    """The control for the test above: plain training does not hold the masks."""
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.8}])
    train(cm.model, tiny, epochs=3, batch_size=16, lr=0.05, optimizer="sgd", weight_decay=1e-2)
    assert not pruned_are_zero(cm)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "mpd", "blocks": 4}],
        [{"op": "nm_prune", "n": 1, "m": 4}],
        [{"op": "block_prune", "sparsity": 0.6, "block": [2, 4]}],
        [{"op": "neuron_prune", "ratio": 0.5}, {"op": "prune", "sparsity": 0.5}],
    ],
    ids=["mpd", "nm_prune", "block_prune", "neuron_prune+prune"],
)
def test_every_mask_holds_under_momentum_and_weight_decay(
    tiny_flat, pruned_are_zero, steps, optimizer
):
    torch.manual_seed(0)
    lenet = build_model("lenet-300-100", {"in_features": 64, "num_classes": 3})
    cm = apply_strategy(lenet, steps)
    masks = {k: v.clone() for k, v in cm.masks.items()}
    finetune(cm, tiny_flat, method="masked", epochs=3, lr=0.05, batch_size=16,
             optimizer=optimizer, weight_decay=0.1)  # fmt: skip
    assert pruned_are_zero(cm) and all(torch.equal(cm.masks[k], m) for k, m in masks.items())
    params = dict(cm.model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][mask] != 0).any(), name


def test_prune_and_float16_both_hold(model, tiny, pruned_are_zero):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5}, {"op": "quantize"}])
    finetune(cm, tiny, epochs=2, batch_size=16, lr=0.01)
    assert pruned_are_zero(cm)
    assert all(torch.equal(p, p.half().float()) for p in cm.model.parameters())


def test_none_changes_nothing(model, tiny):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5}])
    before = [p.clone() for p in cm.model.parameters()]
    finetune(cm, tiny, method="none", epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(before, cm.model.parameters(), strict=True))
