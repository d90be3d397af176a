"""block_prune and nm_prune patterns, and every op's constraint surviving masked training."""

import pytest
import torch

from operators.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.finetune import finetune
from operators.strategy import apply_strategy, validate_steps
from operators.zoo import build_model


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build_model("lenet-300-100", {"in_features": 64, "num_classes": 3})


def test_nm_pattern_is_exact(lenet):
    cm = apply_strategy(lenet, [{"op": "nm_prune", "n": 2, "m": 4}])
    for name in ("fc1.weight", "fc2.weight"):
        groups = cm.model.get_parameter(name).detach().reshape(-1, 4)
        assert ((groups != 0).sum(1) == 2).all()
        kept = groups.abs().sort(1, descending=True).values[:, :2]
        assert (kept > 0).all()
    w = lenet.fc1.weight.detach().reshape(-1, 4).abs()
    kept_mask = cm.masks["fc1.weight"].reshape(-1, 4)
    assert torch.equal(w[kept_mask].reshape(-1, 2).min(1).values >= w[~kept_mask].reshape(-1, 2).max(1).values,
                       torch.ones(len(w), dtype=torch.bool))  # fmt: skip


def test_block_pattern_is_exact_and_stored_block_sparse(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "block_prune", "sparsity": 0.75, "block": [4, 8]}])
    w = cm.model.fc1.weight.detach()  # 300 x 64: 75 x 8 blocks of 4 x 8
    blocks = w.view(75, 4, 8, 8).permute(0, 2, 1, 3).reshape(600, 32)
    nonzero = (blocks != 0).any(1)
    assert int((~nonzero).sum()) == 450  # exactly 75% of the blocks are zero
    assert ((blocks != 0).all(1) | ~nonzero).all()  # a kept block is whole
    path = tmp_path / "b.safetensors"
    save_checkpoint(cm, path, architecture="lenet-300-100", config={"in_features": 64, "num_classes": 3})
    assert read_manifest(path)["tensors"]["fc1.weight"]["encoding"] == "block"
    loaded, _ = load_checkpoint(path, runtime="dense")
    assert torch.equal(loaded.fc1.weight, cm.model.fc1.weight)


@pytest.mark.parametrize(
    "step",
    [
        {"op": "block_prune", "sparsity": 1.5},
        {"op": "block_prune", "sparsity": 0.5, "block": [0, 4]},
        {"op": "nm_prune", "n": 4, "m": 4},
        {"op": "mpd", "blocks": 1},
        {"op": "filter_prune", "ratio": 0.5, "criterion": "l3"},
        {"op": "neuron_prune", "ratio": 1.0},
    ],
)
def test_bad_parameters_are_refused(step):
    with pytest.raises(ValueError, match=r"^steps\[0\]\."):
        validate_steps([step])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "mpd", "blocks": 4}],
        [{"op": "nm_prune", "n": 1, "m": 4}],
        [{"op": "block_prune", "sparsity": 0.6, "block": [2, 4]}],
        [{"op": "neuron_prune", "ratio": 0.5}, {"op": "prune", "sparsity": 0.5}],
    ],
)
def test_masked_entries_stay_zero_under_momentum_and_weight_decay(lenet, tiny_flat, steps, optimizer):
    cm = apply_strategy(lenet, steps)
    masks = {k: v.clone() for k, v in cm.masks.items()}
    finetune(cm, tiny_flat, method="masked", epochs=3, lr=0.05, batch_size=16,
             optimizer=optimizer, weight_decay=0.1)  # fmt: skip
    params = dict(cm.model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all(), name
        assert (params[name][mask] != 0).any(), name


@pytest.fixture
def tiny_flat(make_dataset):
    return make_dataset(shape=(64,), num_classes=3)
