"""``block_prune``: exactly the smallest-norm blocks are zeroed, whole, and stored block-sparse."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.models.zoo import build_model

CONFIG = {"in_features": 64, "num_classes": 3}


@pytest.fixture
def small_lenet():
    torch.manual_seed(0)
    return build_model("lenet-300-100", CONFIG)


def as_blocks(weight: torch.Tensor) -> torch.Tensor:
    """fc1's 300 x 64 weight as its 600 blocks of 4 x 8, one row each."""
    return weight.detach().view(75, 4, 8, 8).permute(0, 2, 1, 3).reshape(600, 32)


def test_block_pattern_is_exact_and_stored_block_sparse(small_lenet, tmp_path):
    cm = apply_strategy(small_lenet, [{"op": "block_prune", "sparsity": 0.75, "block": [4, 8]}])
    blocks = as_blocks(cm.model.fc1.weight)
    nonzero = (blocks != 0).any(1)
    assert int((~nonzero).sum()) == 450  # exactly 75% of the blocks are zero
    assert ((blocks != 0).all(1) | ~nonzero).all()  # a kept block is whole
    norms = as_blocks(small_lenet.fc1.weight).norm(dim=1)
    assert norms[~nonzero].max() <= norms[nonzero].min()  # the smallest L2 norms went
    assert torch.equal(blocks[nonzero], as_blocks(small_lenet.fc1.weight)[nonzero])
    assert cm.report[0]["block_sparsity"]["fc1.weight"] == 0.75
    path = tmp_path / "b.safetensors"
    save_checkpoint(cm, path, architecture="lenet-300-100", config=CONFIG)
    assert read_manifest(path)["tensors"]["fc1.weight"]["encoding"] == "block"
    loaded, _ = load_checkpoint(path, runtime="dense")
    assert torch.equal(loaded.fc1.weight, cm.model.fc1.weight)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "block_prune", "sparsity": 1.5}, r"sparsity: must be in \[0, 1\)"),
        (
            {"op": "block_prune", "sparsity": 0.5, "block": [0, 4]},
            r"block\[0\]: must be a positive integer",
        ),
        ({"op": "block_prune", "sparsity": 0.5, "block": 4}, r"block: must be \[rows, cols\]"),
        (
            {"op": "block_prune", "sparsity": 0.5, "scope": "row"},
            "scope: must be one of global, layer",
        ),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
