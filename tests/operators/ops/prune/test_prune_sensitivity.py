"""``prune`` with ``allocate: sensitivity``: the global count is exact, a layer made sensitive
keeps more of its weights, the pre-pass is cached, and ``uniform`` is today's pruning."""

import copy

import pytest
import torch
from torch.nn import functional as F

from operators.core import sensitivity as core_sensitivity
from operators.core.strategy import apply_strategy
from operators.ops.prune import sensitivity
from operators.ops.prune.sensitivity import allocate_counts

WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def zeros(cm, names=WEIGHTS) -> dict[str, int]:
    return {n: int((cm.model.get_parameter(n) == 0).sum()) for n in names}


def prune(model, sparsity, x, **params):
    step = {"op": "prune", "sparsity": sparsity, **params}
    return apply_strategy(copy.deepcopy(model), [step], example_input=x)


def kl_from(model, cm, x) -> float:
    with torch.no_grad():
        p, q = F.log_softmax(model(x), -1), F.log_softmax(cm.model.eval()(x), -1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_sensitivity_allocation_hits_the_global_sparsity_exactly(trained_mlp, digits, sparsity):
    cm = prune(trained_mlp, sparsity, digits.calibration_batch(), allocate="sensitivity")
    total = sum(trained_mlp.get_parameter(n).numel() for n in WEIGHTS)
    assert sum(zeros(cm).values()) == round(sparsity * total)
    report = cm.report[0]
    assert report["allocate"] == "sensitivity"
    assert report["layers"] == {
        n: z / cm.model.get_parameter(n).numel() for n, z in zeros(cm).items()
    }
    assert report["layers"] != prune(trained_mlp, sparsity, None).report[0]["layers"]


def test_a_layer_made_sensitive_keeps_more_weights(trained_mlp, digits):
    # fc2 and its bias x 0.01, fc3 x 100: the same function (ReLU is positively homogeneous),
    # but fc2's weights are now the smallest, so one global magnitude threshold takes nearly
    # all of them; the sensitivity pre-pass sees what that does to the output.
    model = copy.deepcopy(trained_mlp)
    with torch.no_grad():
        model.fc2.weight.mul_(0.01)
        model.fc2.bias.mul_(0.01)
        model.fc3.weight.mul_(100)
    x = digits.calibration_batch()
    uniform = prune(model, 0.7, x)
    allocated = prune(model, 0.7, x, allocate="sensitivity")
    assert uniform.report[0]["layers"]["fc2.weight"] > 0.99
    assert allocated.report[0]["layers"]["fc2.weight"] < 0.9
    assert sum(zeros(allocated).values()) == sum(zeros(uniform).values())
    assert kl_from(model, allocated, x) < kl_from(model, uniform, x) / 2


def test_uniform_is_the_global_magnitude_pruning_bit_for_bit(trained_mlp):
    default = prune(trained_mlp, 0.9, None)
    uniform = prune(trained_mlp, 0.9, None, allocate="uniform")
    magnitudes = torch.cat([trained_mlp.get_parameter(n).detach().abs().flatten() for n in WEIGHTS])
    threshold = magnitudes.sort().values[round(0.9 * magnitudes.numel()) - 1]
    for n in WEIGHTS:
        assert torch.equal(default.masks[n], uniform.masks[n])
        assert torch.equal(
            default.masks[n], trained_mlp.get_parameter(n).detach().abs() > threshold
        )
        assert torch.equal(default.model.get_parameter(n), uniform.model.get_parameter(n))
    assert "allocate" not in uniform.report[0] and "allocate" not in uniform.report[0]["params"]


def test_the_pre_pass_runs_once_per_weights_and_inputs(trained_mlp, digits):
    x = digits.calibration_batch()
    calls = []

    def counted(model):
        model = copy.deepcopy(model)
        model.register_forward_hook(lambda *_: calls.append(1))
        return model

    core_sensitivity._CACHE.clear()
    first = prune(counted(trained_mlp), 0.9, x, allocate="sensitivity")
    assert len(calls) == 1 + len(WEIGHTS) * len(sensitivity.GRID)
    calls.clear()
    again = prune(counted(trained_mlp), 0.8, x, allocate="sensitivity")  # another trial's strength
    assert calls == []
    assert sum(zeros(again).values()) < sum(zeros(first).values())


def test_earlier_masks_are_kept_and_the_count_is_still_exact(trained_mlp, digits):
    steps = [{"op": "prune", "sparsity": 0.5, "scope": "layer"},
             {"op": "prune", "sparsity": 0.9, "allocate": "sensitivity"}]  # fmt: skip
    cm = apply_strategy(copy.deepcopy(trained_mlp), steps, example_input=digits.calibration_batch())
    total = sum(trained_mlp.get_parameter(n).numel() for n in WEIGHTS)
    assert sum(zeros(cm).values()) == round(0.9 * total)
    assert all(v >= 0.5 - 1e-3 for v in cm.report[1]["layers"].values())


def test_allocation_follows_the_cheapest_slope_and_respects_floors():
    curves = {"cheap": [(50, 0.1), (90, 0.3), (100, 5.0)], "dear": [(50, 2.0), (90, 9.0)]}
    assert allocate_counts(curves, {"cheap": 0, "dear": 0}, 120) == {"cheap": 90, "dear": 30}
    assert allocate_counts(curves, {"cheap": 0, "dear": 40}, 120) == {"cheap": 80, "dear": 40}
    assert sum(allocate_counts(curves, {"cheap": 0, "dear": 0}, 157).values()) == 157


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "prune", "sparsity": 0.5, "allocate": "hessian"},
         r"allocate: must be one of uniform, sensitivity"),
        ({"op": "prune", "sparsity": 0.5, "allocate": "sensitivity", "scope": "layer"},
         r"allocate: sensitivity sets per-layer sparsities itself"),
    ],
)  # fmt: skip
def test_bad_allocations_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
