"""Masked fine-tuning holds the compression: pruned weights stay exactly zero, fp16 stays fp16."""

import pytest
import torch

from operators.finetune import FINETUNE_METHODS, finetune
from operators.strategy import apply_strategy
from operators.training import train
from operators.zoo import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("mlp", {"in_features": 64, "hidden": [32], "num_classes": 3})


def pruned_are_zero(cm) -> bool:
    params = dict(cm.model.named_parameters())
    return all(bool((params[name][~mask] == 0).all()) for name, mask in cm.masks.items())


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"), [("sgd", 1e-2), ("adam", 0.0), ("adamw", 1e-2)]
)
def test_masked_entries_stay_exactly_zero(model, tiny, optimizer, weight_decay):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.8}])
    before = cm.model.fc1.weight.detach().clone()
    finetune(
        cm, tiny, epochs=3, batch_size=16, lr=0.05, optimizer=optimizer, weight_decay=weight_decay
    )
    assert pruned_are_zero(cm)
    kept = cm.masks["fc1.weight"]
    assert not torch.equal(cm.model.fc1.weight[kept], before[kept])  # it did train


def test_without_enforce_momentum_revives_pruned_weights(model, tiny):
    """The control for the test above: plain training does not hold the masks."""
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.8}])
    train(cm.model, tiny, epochs=3, batch_size=16, lr=0.05, optimizer="sgd", weight_decay=1e-2)
    assert not pruned_are_zero(cm)


def test_prune_and_float16_both_hold(model, tiny):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5}, {"op": "quantize"}])
    finetune(cm, tiny, epochs=2, batch_size=16, lr=0.01)
    assert pruned_are_zero(cm)
    assert all(torch.equal(p, p.half().float()) for p in cm.model.parameters())


def test_none_changes_nothing_and_unknown_methods_are_refused(model, tiny):
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5}])
    before = [p.clone() for p in cm.model.parameters()]
    finetune(cm, tiny, method="none")
    assert all(torch.equal(a, b) for a, b in zip(before, cm.model.parameters(), strict=True))
    assert FINETUNE_METHODS == ("none", "masked", "kd", "lc", "admm", "hspg")
    with pytest.raises(ValueError, match="unknown fine-tuning method 'ga'; allowed: none, masked"):
        finetune(cm, tiny, method="ga")
