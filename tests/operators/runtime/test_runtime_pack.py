"""From a compressed model to the runnable one: pack_model projects a copy and puts each
packed kind in place, packed_model's runtimes compute what the compressed model does."""

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy
from operators.ops.cluster.packed import ClusteredLayer
from operators.ops.quantize.packed import Int8Layer
from operators.ops.unify.packed import UnifiedLayer
from operators.runtime import SparseLinear, pack_model, packed_model

UNIFY = {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}
MIXED = [{"op": "cluster", "bits": 4, "include": "fc1"},
         {"op": "quantize", "dtype": "int8", "include": "fc2|conv"},
         {**UNIFY, "include": "fc3"}]  # fmt: skip


def test_a_mixed_strategy_packs_each_layer_into_its_kind(small_arch, assert_packs_exactly):
    cm, packed = assert_packs_exactly(small_arch, MIXED)
    kinds = {n: type(m) for n, m in packed.named_modules() if n in cm.packing}
    expected = {"fc1": ClusteredLayer, "fc2": Int8Layer, "fc3": UnifiedLayer}
    if small_arch[0] == "lenet-5":
        expected |= {"conv1": Int8Layer, "conv2": Int8Layer}
    assert kinds == expected


def test_pack_model_projects_a_copy_and_leaves_the_compressed_model(lenet):
    cm = apply_strategy(
        lenet, [{"op": "prune", "sparsity": 0.9}, {"op": "cluster", "bits": 2, "include": "fc2"}]
    )
    with torch.no_grad():
        for p in cm.model.parameters():
            p.add_(1e-3)  # as if an optimizer step ran without enforce()
    moved = [p.detach().clone() for p in cm.model.parameters()]
    packed = pack_model(cm)
    assert all(torch.equal(a, b) for a, b in zip(moved, cm.model.parameters(), strict=True))
    assert isinstance(packed.fc2, ClusteredLayer) and type(packed.fc1) is nn.Linear
    assert torch.equal(packed.fc1.weight, cm.project("fc1.weight", cm.model.fc1.weight))
    assert torch.equal(packed.fc2.dense_weight(), cm.project("fc2.weight", cm.model.fc2.weight))


@pytest.mark.parametrize("runtime", ["dense", "packed"])
def test_runtimes_choose_the_form_and_compute_the_same(lenet, runtime):
    cm = apply_strategy(
        lenet,
        [{"op": "prune", "sparsity": 0.9}, {"op": "quantize", "dtype": "int8", "include": "fc2"}],
    )
    model = packed_model(cm, runtime=runtime)
    assert not model.training
    if runtime == "dense":
        assert {type(m) for m in model.modules()} <= {nn.Sequential, nn.Flatten, nn.Linear, nn.ReLU}
    else:  # the mostly-zero Linear layers run as CSR, the int8 layer packed
        assert isinstance(model.fc1, SparseLinear) and isinstance(model.fc2, Int8Layer)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), cm.model.eval()(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="runtime: unknown 'fast'; allowed: "):
        packed_model(cm, runtime="fast")
