"""Operators II fine-tune methods on builtin:digits: each runs briefly and holds the structure."""

import pytest
import torch

from operators.finetune import FINETUNE_METHODS, finetune, method_params
from operators.strategy import apply_strategy
from operators.training import train
from operators.unify import KEEP, PRUNE, UNIFY
from operators.zoo import build_model

CONFIG = {"in_features": 64, "hidden": [32, 16], "num_classes": 10}
PRUNE_CLUSTER = [{"op": "prune", "sparsity": 0.7}, {"op": "cluster", "bits": 2},
                 {"op": "quantize", "dtype": "float16"}]  # fmt: skip
UNIFY_STEP = [{"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}]
INT8 = [{"op": "quantize", "dtype": "int8"}]
FAST = {"epochs": 0.3, "batch_size": 64}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = build_model("mlp", CONFIG)
    train(model, digits, epochs=2)
    return model


def holds(cm, steps) -> None:
    """The compressed structure of ``steps`` holds on ``cm``'s weights."""
    params = dict(cm.model.named_parameters())
    for name, mask in cm.masks.items():
        assert bool((params[name].detach()[~mask] == 0).all()), name
    ops = {s["op"] for s in steps}
    for name, constraint in cm.constraints.items():
        w = params[name].detach()
        if "cluster" in ops:
            assert len(torch.unique(w[w != 0])) <= 4
            assert torch.equal(w, w.half().float())
        if "unify" in ops:
            mat, states = w.reshape(w.shape[0], -1), constraint.state.element_states()
            assert bool((mat[states == PRUNE] == 0).all())
            scales = constraint.state.element_scales()
            assert torch.equal(mat[states == UNIFY].abs(), scales[states == UNIFY])
            assert (states == KEEP).any()
        if "quantize" in ops and not ops & {"cluster", "unify"}:
            scales = constraint.scales[:, None]
            assert torch.equal(torch.round(w / scales) * scales, w)


@pytest.mark.parametrize(
    ("steps", "method", "extra"),
    [
        (PRUNE_CLUSTER, "masked", {}),
        (PRUNE_CLUSTER, "kd", {"temperature": 2.0, "alpha": 0.5}),
        (PRUNE_CLUSTER, "lc", {"iterations": 3, "lr": 0.01}),
        (PRUNE_CLUSTER, "admm", {"iterations": 2, "lr": 0.01}),
        (UNIFY_STEP, "masked", {}),
        (UNIFY_STEP, "kd", {}),
        (UNIFY_STEP, "admm", {"iterations": 2, "lr": 0.01, "rho_init": 1e-3, "rho_final": 1e-2}),
        (INT8, "masked", {}),
        (INT8, "lc", {"iterations": 2, "mu_init": 1e-2, "mu_mult": 2.0, "lr": 0.01}),
    ],
)
def test_method_runs_and_holds_the_structure(trained, digits, steps, method, extra):
    cm = apply_strategy(trained, steps)
    before = {n: p.detach().clone() for n, p in cm.model.named_parameters()}
    finetune(cm, digits, method=method, **FAST, **extra)
    holds(cm, steps)
    assert any(not torch.equal(before[n], p) for n, p in cm.model.named_parameters())
    cm.packed(runtime="packed")  # the structure still packs (the packers verify it)


def test_masked_cluster_trains_the_centroids(trained, digits):
    cm = apply_strategy(trained, [{"op": "cluster", "bits": 2}])
    before = torch.unique(cm.model.fc1.weight.detach())
    finetune(cm, digits, method="masked", epochs=0.3, batch_size=64, lr=1e-2)
    after = torch.unique(cm.model.fc1.weight.detach())
    assert len(after) == len(before) == 4 and not torch.equal(after, before)


def test_kd_uses_the_uncompressed_model_as_teacher(trained):
    cm = apply_strategy(trained, PRUNE_CLUSTER)
    assert cm.teacher is trained


def test_hspg_zeroes_and_removes_filters(digits):
    torch.manual_seed(0)
    data = digits.__class__(
        x_train=digits.x_train[:256].reshape(-1, 1, 8, 8),
        y_train=digits.y_train[:256],
        x_val=digits.x_val.reshape(-1, 1, 8, 8),
        y_val=digits.y_val,
        num_classes=10,
    )
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10)
    )
    cm = apply_strategy(model, [], example_input=data.x_val[:1])
    finetune(cm, data, method="hspg", epochs=4, batch_size=32, lr=0.05, lam=5.0)
    removed = cm.report[-1]["removed_channels"]
    assert removed and cm.model[0].out_channels == 8 - len(removed["0"])
    assert cm.model[3].in_features == cm.model[0].out_channels * 36
    cm.model(data.x_val[:2])


def test_hspg_refuses_masks(trained, digits):
    cm = apply_strategy(trained, PRUNE_CLUSTER)
    with pytest.raises(ValueError, match="hspg"):
        finetune(cm, digits, method="hspg", **FAST)


def test_method_parameters_are_validated():
    assert FINETUNE_METHODS == ("none", "masked", "kd", "lc", "admm", "hspg")
    assert method_params("kd", {"temperature": None}) == {"temperature": 4.0, "alpha": 0.9}
    with pytest.raises(ValueError, match="temperature: used only by method kd, not masked"):
        method_params("masked", {"temperature": 2.0})
    with pytest.raises(ValueError, match="alpha: must be in"):
        method_params("kd", {"alpha": 1.5})
    with pytest.raises(ValueError, match="iterations: must be an integer"):
        method_params("lc", {"iterations": 0})
    with pytest.raises(ValueError, match="rho_final: must be >= rho_init"):
        method_params("admm", {"rho_init": 1.0, "rho_final": 0.1})
    with pytest.raises(ValueError, match="unknown fine-tuning method 'ga'"):
        finetune(None, None, method="ga")
