"""``cluster`` with ``allocate: sensitivity``: the mean width stays within ``bits``, the most
sensitive layer gets more bits, and ``uniform`` is today's clustering."""

import copy

import torch
from torch.nn import functional as F

from operators.core.strategy import apply_strategy
from operators.ops.cluster.sensitivity import allocate_bits

LAYERS = ("fc1", "fc2", "fc3")


def cluster(model, x, bits=3, **params):
    steps = [{"op": "prune", "sparsity": 0.5}, {"op": "cluster", "bits": bits, **params}]
    return apply_strategy(copy.deepcopy(model), steps, example_input=x)


def kl_from(model, cm, x) -> float:
    with torch.no_grad():
        p, q = F.log_softmax(model(x), -1), F.log_softmax(cm.model.eval()(x), -1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


def test_mean_width_is_within_bits_and_the_sensitive_layer_gets_more(trained_mlp, digits):
    # at 2 bits the output layer (103 values kept) does the most damage per value clustered
    x = digits.calibration_batch()
    uniform = cluster(trained_mlp, x, bits=2)
    allocated = cluster(trained_mlp, x, bits=2, allocate="sensitivity")
    layers = allocated.report[1]["layers"]
    sizes = {n: layers[n]["clustered"] for n in LAYERS}
    mean = sum(sizes[n] * layers[n]["bits"] for n in LAYERS) / sum(sizes.values())
    assert 1.5 < mean <= 2  # the budget is spent, never exceeded
    assert layers["fc3"]["bits"] > 2 > layers["fc1"]["bits"]
    assert {n: allocated.packing[n].args["bits"] for n in LAYERS} == {
        n: layers[n]["bits"] for n in LAYERS
    }
    assert all(layers[n]["values"] <= 2 ** layers[n]["bits"] for n in LAYERS)
    assert kl_from(trained_mlp, allocated, x) < kl_from(trained_mlp, uniform, x)


def test_uniform_is_todays_clustering(trained_mlp, digits):
    x = digits.calibration_batch()
    default, uniform = cluster(trained_mlp, x), cluster(trained_mlp, x, allocate="uniform")
    for n in LAYERS:
        assert torch.equal(default.model.get_parameter(f"{n}.weight"),
                           uniform.model.get_parameter(f"{n}.weight"))  # fmt: skip
    assert default.report == uniform.report
    assert "allocate" not in uniform.report[1]["params"]
    assert all("bits" not in entry for entry in uniform.report[1]["layers"].values())


def test_allocation_minimises_the_damage_within_the_budget():
    curves = {"a": {2: 1.0, 3: 0.1, 4: 0.05}, "b": {2: 0.2, 3: 0.19, 4: 0.18}}
    assert allocate_bits(curves, {"a": 10, "b": 10}, 3) == {"a": 4, "b": 2}
    assert allocate_bits(curves, {"a": 10, "b": 100}, 3) == {"a": 4, "b": 2}  # b's step: too big
    assert allocate_bits(curves, {"a": 10, "b": 10}, 2) == {"a": 2, "b": 2}
    assert allocate_bits(curves, {"a": 10, "b": 10}, 4) == {"a": 4, "b": 4}


def test_bad_allocation_is_refused(assert_invalid_step):
    assert_invalid_step({"op": "cluster", "bits": 3, "allocate": "hessian"},
                        r"allocate: must be one of uniform, sensitivity")  # fmt: skip


def test_per_layer_widths_pack_and_reload_exactly(small_arch, assert_packs_exactly):
    steps = [{"op": "prune", "sparsity": 0.5}, {"op": "cluster", "bits": 2, "allocate": "sensitivity"}]
    cm, _ = assert_packs_exactly(small_arch, steps)
    assert all("bits" in entry for entry in cm.report[1]["layers"].values())
