"""Operators II ops end to end: packed forward equals dense forward, bit-exact round trips,
compact storage and parameter validation for quantize int8, cluster and unify."""

import pytest
import torch
from torch import nn

from operators.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.quantization import ClusteredLayer, Int8Layer
from operators.stored import decode_positions, encode_positions
from operators.strategy import apply_strategy, validate_steps
from operators.unification import UnifiedLayer
from operators.zoo import build_model

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10}, (64,))
LENET5 = ("lenet-5", {}, (1, 28, 28))
UNIFY = {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25}
STRATEGIES = {
    "int8": [{"op": "quantize", "dtype": "int8"}],
    "prune+int8": [{"op": "prune", "sparsity": 0.8}, {"op": "quantize", "dtype": "int8"}],
    "cluster": [{"op": "cluster", "bits": 3}],
    "cluster-kmeans": [{"op": "cluster", "bits": 2, "method": "kmeans"}],
    "prune+cluster+fp16": [{"op": "prune", "sparsity": 0.9}, {"op": "cluster", "bits": 2},
                           {"op": "quantize", "dtype": "float16"}],  # fmt: skip
    "unify": [UNIFY],
    "unify+bf16": [{**UNIFY, "block": [2, 2]}, {"op": "quantize", "dtype": "bfloat16"}],
    "mixed": [{"op": "cluster", "bits": 4, "include": "fc1"},
              {"op": "quantize", "dtype": "int8", "include": "fc2|conv"},
              {**UNIFY, "include": "fc3"}],  # fmt: skip
}
KINDS = (Int8Layer, ClusteredLayer, UnifiedLayer)


@pytest.fixture(params=[MLP, LENET5], ids=["mlp", "lenet5"])
def arch(request):
    return request.param


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_packed_forward_equals_dense_forward_and_round_trip_is_exact(arch, strategy, tmp_path):
    name, config, shape = arch
    torch.manual_seed(0)
    model = build_model(name, config)
    cm = apply_strategy(model, STRATEGIES[strategy])
    x = torch.randn(7, *shape)
    with torch.no_grad():
        expected = cm.model.eval()(x)
        packed = cm.packed(runtime="packed")
        assert any(isinstance(m, KINDS) for m in packed.modules())
        assert torch.allclose(packed(x), expected, rtol=1e-5, atol=1e-6)
    path = tmp_path / "p.safetensors"
    save_checkpoint(cm, path, architecture=name, config=config)
    for runtime in ("packed", "dense"):
        loaded, _ = load_checkpoint(path, runtime=runtime)
        with torch.no_grad():
            assert torch.allclose(loaded(x), expected, rtol=1e-5, atol=1e-6), runtime
    dense, _ = load_checkpoint(path, runtime="dense")
    weights = dict(cm.model.named_parameters())
    for key, value in dense.state_dict().items():
        assert torch.equal(value, weights[key].detach()), key  # bit-exact (and -0.0 == 0.0)


def test_prune_cluster_stores_bit_packed_indices_and_relative_positions(tmp_path):
    name, config, _ = MLP
    torch.manual_seed(0)
    cm = apply_strategy(build_model(name, config), STRATEGIES["prune+cluster+fp16"])
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


@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.9, 1.0])
def test_position_codecs_round_trip(density):
    g = torch.Generator().manual_seed(1)
    pattern = torch.rand(1000, generator=g) < density
    encoding, symbols, packed = encode_positions(pattern)
    assert torch.equal(decode_positions(encoding, symbols, packed, 1000), pattern)
    assert packed.numel() <= 125


def test_int8_is_stored_as_int8_with_scales(tmp_path):
    name, config, _ = MLP
    cm = apply_strategy(build_model(name, config), STRATEGIES["int8"])
    path = tmp_path / "p.safetensors"
    save_checkpoint(cm, path, architecture=name, config=config)
    tensors = read_manifest(path)["tensors"]
    assert tensors["fc1.qweight"]["dtype"] == "int8" and tensors["fc1.scales"]["shape"] == [48]
    w = cm.model.fc1.weight.detach()
    scales = cm.constraints["fc1.weight"].scales[:, None]
    q = torch.round(w / scales)
    assert torch.equal(q * scales, w) and q.abs().max() <= 127


def test_unify_then_prune_is_refused_when_packed():
    name, config, _ = MLP
    cm = apply_strategy(build_model(name, config), [UNIFY, {"op": "prune", "sparsity": 0.5}])
    with pytest.raises(ValueError, match="unified"):
        cm.packed(runtime="packed")


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "quantize", "dtype": "int4"}, "dtype: must be one of float16, bfloat16, int8"),
        ({"op": "cluster"}, "bits: required by cluster"),
        ({"op": "cluster", "bits": 9}, r"bits: must be an integer in \[1, 8\]"),
        ({"op": "cluster", "bits": 2.5}, "bits: must be an integer"),
        ({"op": "cluster", "bits": 2, "method": "lloyd"}, "method: must be one of dp, kmeans"),
        ({"op": "unify", "unify_ratio": 1.5}, "unify_ratio: must be in"),
        ({"op": "unify", "unify_ratio": 0.6, "prune_ratio": 0.6}, "sum|<= 1"),
        ({"op": "unify", "unify_ratio": 0.5, "block": [0, 4]}, "block: must be two integers"),
        ({"op": "unify", "unify_ratio": 0.5, "block": 4}, "block: must be two integers"),
        ({"op": "cluster", "bits": 2, "include": "("}, "include: invalid regular expression"),
    ],
)
def test_parameters_are_validated(step, message):
    with pytest.raises(ValueError, match=message):
        validate_steps([step])


def test_conflicting_ops_on_one_layer_are_refused():
    model = build_model(*MLP[:2])
    with pytest.raises(ValueError, match="already packed"):
        apply_strategy(model, [{"op": "cluster", "bits": 2}, {"op": "quantize", "dtype": "int8"}])
    with pytest.raises(ValueError, match="before ops that mask"):
        apply_strategy(model, [{"op": "prune", "sparsity": 0.5}, UNIFY])
    with pytest.raises(ValueError, match="selected no Linear or Conv2d"):
        apply_strategy(model, [{"op": "cluster", "bits": 2, "include": "nothing"}])


def test_include_exclude_select_layers():
    model = build_model(*MLP[:2])
    cm = apply_strategy(model, [{"op": "cluster", "bits": 2, "exclude": "fc3"}])
    assert set(cm.packing) == {"fc1", "fc2"}
    assert len(torch.unique(cm.model.fc1.weight)) <= 4
    assert len(torch.unique(cm.model.fc3.weight)) > 4
    assert isinstance(cm.model.fc3, nn.Linear)
