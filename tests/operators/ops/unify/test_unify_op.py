"""The ``unify`` op: the exact projection on every selected weight, pruned blocks in the masks,
block counts in the report, a unified block trains its one magnitude, bad ratios refused."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.unify.algorithm import PRUNE, UNIFY, project_unify
from operators.ops.unify.op import UnifiedBlocks

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})
UNIFY_STEP = {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}


def test_each_weight_is_projected_and_its_pruned_blocks_are_masked():
    torch.manual_seed(0)
    model = build_model(*MLP)
    cm = apply_strategy(model, [UNIFY_STEP])
    expected, state = project_unify(model.fc1.weight.detach(), (1, 4), 0.5, 0.25)
    assert torch.equal(cm.model.fc1.weight, expected)
    assert torch.equal(cm.masks["fc1.weight"], state.element_states() != PRUNE)
    assert cm.report[0]["blocks"]["fc1"] == {"kept": 192, "unified": 384, "pruned": 192}  # of 768
    assert set(cm.packing) == {"fc1", "fc2", "fc3"}


def test_a_unified_block_gets_the_signed_sum_of_its_gradients():
    w = torch.tensor([[0.5, -1.0, 2.0, -0.1]])
    projected, state = project_unify(w, (1, 2), 0.5, 0.5)  # one block unified, one pruned
    constraint = UnifiedBlocks(state, projected)
    grad = constraint.grad(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    unified = state.element_states()[0] == UNIFY
    signs = torch.sign(projected[0])
    assert grad[0][~unified].tolist() == [0.0, 0.0]  # the pruned block learns nothing
    block_grad = float((signs[unified] * torch.tensor([1.0, 2.0, 3.0, 4.0])[unified]).sum())
    assert torch.equal(grad[0][unified], signs[unified] * block_grad)


def test_unify_after_a_mask_is_refused():
    with pytest.raises(ValueError, match="unify: must come before ops that mask fc1.weight"):
        apply_strategy(build_model(*MLP), [{"op": "prune", "sparsity": 0.5}, UNIFY_STEP])


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "unify", "unify_ratio": 1.5}, "unify_ratio: must be in"),
        (
            {"op": "unify", "unify_ratio": 0.6, "prune_ratio": 0.6},
            "unify_ratio: unify_ratio \\+ prune_ratio must be <= 1",
        ),
        ({"op": "unify", "unify_ratio": 0.5, "block": [0, 4]}, "block: must be two integers"),
        ({"op": "unify", "unify_ratio": 0.5, "block": 4}, "block: must be two integers"),
        ({"op": "unify"}, "unify_ratio: required by unify"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
