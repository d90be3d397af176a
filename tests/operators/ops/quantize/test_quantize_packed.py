"""The ``int8`` packed kind: its forward is the dense one, and the file stores int8 values with
one float32 scale per output channel."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import read_manifest, save_checkpoint, save_dense_checkpoint
from operators.models.zoo import build_model
from operators.ops.quantize.packed import Int8Layer

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})


@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "quantize", "dtype": "int8"}],
        [{"op": "prune", "sparsity": 0.8}, {"op": "quantize", "dtype": "int8"}],
    ],
    ids=["int8", "prune+int8"],
)
def test_packed_forward_equals_dense_forward_and_round_trip_is_exact(
    small_arch, steps, assert_packs_exactly
):
    assert_packs_exactly(small_arch, steps, Int8Layer)


def test_int8_is_stored_as_int8_with_scales(tmp_path):
    name, config = MLP
    torch.manual_seed(0)
    cm = apply_strategy(build_model(name, config), [{"op": "quantize", "dtype": "int8"}])
    path = tmp_path / "p.safetensors"
    size = save_checkpoint(cm, path, architecture=name, config=config)
    manifest = read_manifest(path)
    tensors = manifest["tensors"]
    assert manifest["modules"]["fc1"]["kind"] == "int8"
    assert tensors["fc1.qweight"]["dtype"] == "int8" and tensors["fc1.qweight"]["shape"] == [48, 64]
    assert tensors["fc1.scales"]["dtype"] == "float32" and tensors["fc1.scales"]["shape"] == [48]
    dense = save_dense_checkpoint(
        cm.teacher, tmp_path / "d.safetensors", architecture=name, config=config
    )
    assert size < dense / 2.5  # a byte a weight instead of four (scales, biases and headers aside)
