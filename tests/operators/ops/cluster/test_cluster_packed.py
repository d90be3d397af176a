"""The ``clustered`` packed kind: its forward is the dense one, and the file stores a codebook,
bit-packed indices and relative positions of the kept entries."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import read_manifest, save_checkpoint
from operators.models.zoo import build_model
from operators.ops.cluster.packed import ClusteredLayer

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10})
PRUNE_CLUSTER_FP16 = [{"op": "prune", "sparsity": 0.9}, {"op": "cluster", "bits": 2},
                      {"op": "quantize", "dtype": "float16"}]  # fmt: skip


@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "cluster", "bits": 3}],
        [{"op": "cluster", "bits": 2, "method": "kmeans"}],
        PRUNE_CLUSTER_FP16,
        [{"op": "prune", "sparsity": 0.9}, {"op": "cluster", "bits": 2, "bias_bits": 3},
         {"op": "quantize", "dtype": "float16"}],
    ],
    ids=["cluster", "cluster-kmeans", "prune+cluster+fp16", "clustered-bias+fp16"],
)
def test_packed_forward_equals_dense_forward_and_round_trip_is_exact(
    small_arch, steps, assert_packs_exactly
):
    assert_packs_exactly(small_arch, steps, ClusteredLayer)


def test_prune_cluster_stores_bit_packed_indices_and_relative_positions(tmp_path):
    name, config = MLP
    torch.manual_seed(0)
    cm = apply_strategy(build_model(name, config), PRUNE_CLUSTER_FP16)
    path = tmp_path / "p.safetensors"
    size = save_checkpoint(cm, path, architecture=name, config=config)
    manifest = read_manifest(path)
    fmt = manifest["modules"]["fc1"]["args"]
    nnz = int(cm.masks["fc1.weight"].sum())
    assert manifest["modules"]["fc1"]["kind"] == "clustered"
    assert fmt["nnz"] == nnz and fmt["bits"] == 2 and fmt["k"] <= 4
    assert manifest["tensors"]["fc1.indices"]["shape"] == [-(-nnz * 2 // 8)]
    assert manifest["tensors"]["fc1.codebook"]["dtype"] == "float16"
    assert fmt["positions"].startswith("gap")  # relative indices beat the bitmask at 10%
    assert manifest["tensors"]["fc1.positions"]["shape"][0] < 64 * 48 / 8
    weights = sum(p.numel() for p in cm.model.parameters())
    assert size < weights * 4 / 5  # far below dense fp32, even with the header of a tiny model


def test_bias_bits_stores_each_bias_as_a_codebook_and_indices_and_shrinks_the_file(tmp_path):
    name, config = MLP
    sizes, models = {}, {}
    for bias_bits in (None, 2):
        torch.manual_seed(0)
        cluster = {"op": "cluster", "bits": 2, **({"bias_bits": bias_bits} if bias_bits else {})}
        steps = [PRUNE_CLUSTER_FP16[0], cluster, PRUNE_CLUSTER_FP16[2]]
        cm = apply_strategy(build_model(name, config), steps)
        path = tmp_path / f"b{bias_bits}.acpk"
        sizes[bias_bits] = save_checkpoint(cm, path, architecture=name, config=config)
        models[bias_bits] = (cm, read_manifest(path))
    cm, manifest = models[2]
    for layer in ("fc1", "fc2", "fc3"):
        bias = cm.model.get_submodule(layer).bias
        assert len(torch.unique(bias)) <= 4  # held to its codebook
        fmt = manifest["modules"][layer]["args"]
        assert fmt["bias_bits"] == 2 and 1 <= fmt["bias_k"] <= 4
        tensors = manifest["tensors"]
        assert f"{layer}.bias" not in tensors  # decoded when loaded, never stored
        assert tensors[f"{layer}.bias_codebook"]["dtype"] == "float16"
        assert tensors[f"{layer}.bias_indices"]["shape"] == [-(-bias.numel() * 2 // 8)]
    assert "bias_bits" not in models[None][1]["modules"]["fc1"]["args"]
    assert sizes[2] < sizes[None] - 48  # 58 fp16 biases (116 bytes) became 2-bit indices
