"""The fine-tuning methods on builtin:digits: each one trains, lowers the validation loss the
compression raised and holds the structure; kd distils the uncompressed model (not the
labels); hspg removes exactly the filters it zeroed; parameters are validated."""

import copy

import pytest
import torch
from torch.nn import functional as F

from operators.core.strategy import apply_strategy
from operators.data.datasets import Dataset
from operators.metrics import evaluate
from operators.ops.unify.algorithm import KEEP, PRUNE, UNIFY
from operators.runtime import packed_model
from operators.train import finetune as finetune_module
from operators.train.finetune import FINETUNE_METHODS, finetune, method_params

PRUNE_CLUSTER = [{"op": "prune", "sparsity": 0.7}, {"op": "cluster", "bits": 2},
                 {"op": "quantize", "dtype": "float16"}]  # fmt: skip
UNIFY_STEP = [{"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}]
INT8 = [{"op": "quantize", "dtype": "int8"}]
FAST = {"epochs": 0.3, "batch_size": 64}


@pytest.fixture
def holds(pruned_are_zero):
    """``holds(cm, steps)``: the compressed structure of ``steps`` holds on ``cm``'s weights."""

    def check(cm, steps) -> None:
        assert pruned_are_zero(cm)
        params = dict(cm.model.named_parameters())
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

    return check


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
def test_method_recovers_loss_holds_the_structure_and_packs(
    trained_mlp, digits, holds, steps, method, extra
):
    cm = apply_strategy(trained_mlp, steps)
    before = {n: p.detach().clone() for n, p in cm.model.named_parameters()}
    compressed_loss = evaluate(cm.model, digits)["loss"]
    finetune(cm, digits, method=method, **FAST, **extra)
    holds(cm, steps)
    assert any(not torch.equal(before[n], p) for n, p in cm.model.named_parameters())
    assert evaluate(cm.model, digits)["loss"] < compressed_loss  # it recovered, not diverged
    x = digits.x_val[:16]
    with torch.no_grad():  # the structure still packs (the packers verify it), to the same outputs
        torch.testing.assert_close(packed_model(cm, runtime="packed")(x), cm.model.eval()(x),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def kl_to(teacher, model, x) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(model(x), 1), F.log_softmax(teacher(x), 1),
                              log_target=True, reduction="batchmean"))  # fmt: skip


def agreement(model, labels, x) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def test_kd_distils_the_uncompressed_model_not_the_labels(trained_mlp, digits, holds):
    """The labels are the teacher's predictions shifted by one class: learning them moves the
    student away from the teacher (the masked control), distilling moves it toward it."""
    teacher, x = trained_mlp, digits.x_val
    with torch.no_grad():
        predicted, predicted_val = teacher(digits.x_train).argmax(1), teacher(x).argmax(1)
    shifted = Dataset(digits.x_train, (predicted + 1) % 10, x, (predicted_val + 1) % 10, 10)
    teacher_state = copy.deepcopy(teacher.state_dict())
    results = {}
    for method in ("kd", "masked"):
        cm = apply_strategy(teacher, PRUNE_CLUSTER)
        assert cm.teacher is teacher
        start = kl_to(teacher, cm.model, x), agreement(cm.model, predicted_val, x)
        finetune(cm, shifted, method=method, epochs=1, batch_size=64, lr=1e-2)
        holds(cm, PRUNE_CLUSTER)
        results[method] = (
            start,
            kl_to(teacher, cm.model, x),
            agreement(cm.model, predicted_val, x),
        )
    (kl_start, agree_start), kl_kd, agree_kd = results["kd"]
    _, kl_masked, agree_masked = results["masked"]
    assert kl_kd < 0.5 * kl_start and agree_kd > max(agree_start, 0.85), results
    assert kl_masked > kl_start and agree_masked < agree_start, results  # the labels lead away
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())


def test_kd_needs_a_teacher(trained_mlp, digits):
    cm = apply_strategy(trained_mlp, INT8)
    cm.teacher = None
    with pytest.raises(ValueError, match="method kd: the compressed model has no teacher"):
        finetune(cm, digits, method="kd", **FAST)


def test_hspg_zeroes_and_removes_exactly_those_filters(digits, monkeypatch):
    torch.manual_seed(0)
    data = Dataset(digits.x_train[:256], digits.y_train[:256], digits.x_val, digits.y_val, 10)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10)
    )
    zeroed = {}
    remove = finetune_module.remove_named_channels

    def spy(cm, channels):  # the trained model just before its zero filters are removed
        zeroed["model"], zeroed["channels"] = copy.deepcopy(cm.model), channels
        return remove(cm, channels)

    monkeypatch.setattr(finetune_module, "remove_named_channels", spy)
    cm = apply_strategy(model, [], example_input=data.x_val[:1])
    finetune(cm, data, method="hspg", epochs=4, batch_size=32, lr=0.05, lam=0.8)
    removed = cm.report[-1]["removed_channels"]
    assert removed == zeroed["channels"] and 0 < len(removed["0"]) < 7  # some, not all
    conv = zeroed["model"][0]
    assert (conv.weight[removed["0"]] == 0).all() and (conv.bias[removed["0"]] == 0).all()
    alive = [i for i in range(8) if i not in removed["0"]]
    assert (conv.weight[alive].flatten(1).abs().sum(1) > 0).all()  # only the zero ones went
    assert cm.model[0].out_channels == 8 - len(removed["0"])
    assert cm.model[3].in_features == cm.model[0].out_channels * 36
    assert cm.report[-1]["params"] == sum(p.numel() for p in cm.model.parameters())
    with torch.no_grad():  # removing zero filters does not change the function
        torch.testing.assert_close(cm.model(data.x_val), zeroed["model"](data.x_val))


def test_hspg_refuses_masks(trained_mlp, digits):
    cm = apply_strategy(trained_mlp, PRUNE_CLUSTER)
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
    with pytest.raises(ValueError, match="unknown fine-tuning method 'ga'; allowed: none, masked"):
        finetune(None, None, method="ga")
