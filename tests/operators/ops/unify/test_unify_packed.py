"""The ``unified`` packed kind: its forward is the dense one, the checkpoint round trip is
exact, and a unified layer pruned afterwards no longer packs."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.unify.algorithm import UNIFY as UNIFIED
from operators.ops.unify.packed import UnifiedLayer
from operators.runtime import packed_model

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})
UNIFY = {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}


@pytest.mark.parametrize(
    "steps",
    [[UNIFY], [{**UNIFY, "block": [2, 2]}, {"op": "quantize", "dtype": "bfloat16"}]],
    ids=["unify", "unify+bf16"],
)
def test_packed_forward_equals_dense_forward_and_round_trip_is_exact(
    small_arch, steps, assert_packs_exactly
):
    assert_packs_exactly(small_arch, steps, UnifiedLayer)


def test_unify_then_prune_is_refused_when_packed():
    name, config = MLP
    torch.manual_seed(0)
    cm = apply_strategy(build_model(name, config), [UNIFY, {"op": "prune", "sparsity": 0.5}])
    # the prune zeroed part of a unified 1x4 block: it is no longer one magnitude with signs
    states = cm.constraints["fc1.weight"].state.element_states().reshape(48, 16, 4)
    pruned = (~cm.masks["fc1.weight"]).reshape(48, 16, 4).sum(2)
    assert ((states[..., 0] == UNIFIED) & (pruned > 0) & (pruned < 4)).any()
    with pytest.raises(ValueError, match="unified: the weight does not have the unified structure"):
        packed_model(cm, runtime="packed")
