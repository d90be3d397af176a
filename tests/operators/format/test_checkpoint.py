"""The packed checkpoint: bit-exact round trips, smallest encodings, no pickle, clear errors."""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from operators.core.model import CompressedModel
from operators.core.strategy import apply_strategy
from operators.format.checkpoint import (
    candidate_encodings,
    load_checkpoint,
    load_weights,
    read_manifest,
    save_checkpoint,
    save_dense_checkpoint,
    stored_bytes,
)
from operators.models.zoo import build_model

LENET = ("lenet-300-100", {})


def assert_bit_exact(loaded: torch.nn.Module, expected: torch.nn.Module) -> None:
    expected_state = expected.state_dict()
    for name, tensor in loaded.state_dict().items():
        want = expected_state[name]
        assert tensor.dtype == want.dtype and tensor.shape == want.shape, name
        if tensor.is_floating_point():
            tensor, want = tensor.view(torch.int32), want.view(torch.int32)
        assert torch.equal(tensor, want), name


def save(cm, path, arch=LENET, **kwargs):
    return save_checkpoint(cm, path, architecture=arch[0], config=arch[1], **kwargs)


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [{"op": "prune", "sparsity": 0.5}],
        [{"op": "prune", "sparsity": 0.95}, {"op": "quantize", "dtype": "float16"}],
        [
            {"op": "prune", "sparsity": 0.7, "scope": "layer"},
            {"op": "quantize", "dtype": "bfloat16"},
        ],
    ],
)
def test_round_trip_is_bit_exact(lenet, tmp_path, steps):
    cm = apply_strategy(lenet, steps)
    path = tmp_path / "m.safetensors"
    size = save(cm, path, metadata={"trial": 7})
    assert size == os.path.getsize(path)
    model, manifest = load_checkpoint(path, runtime="dense")
    assert not model.training
    assert_bit_exact(model, cm.model)
    assert manifest["metadata"] == {"trial": 7} and manifest["architecture"] == "lenet-300-100"


def test_round_trip_of_a_conv_net_and_the_dense_baseline(tmp_path):
    model = build_model("lenet-5", {"image_size": 16})
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.6}, {"op": "quantize"}])
    save(cm, tmp_path / "p.safetensors", arch=("lenet-5", {"image_size": 16}))
    assert_bit_exact(load_checkpoint(tmp_path / "p.safetensors", runtime="dense")[0], cm.model)
    size = save_dense_checkpoint(
        model, tmp_path / "d.safetensors", architecture="lenet-5", config={"image_size": 16}
    )
    assert size == os.path.getsize(tmp_path / "d.safetensors")
    assert_bit_exact(load_checkpoint(tmp_path / "d.safetensors", runtime="dense")[0], model)
    encodings = {
        e["encoding"] for e in read_manifest(tmp_path / "d.safetensors")["tensors"].values()
    }
    assert encodings == {"dense"}


def test_save_projects_without_modifying_the_compressed_model(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}, {"op": "quantize"}])
    with torch.no_grad():
        cm.model.fc1.weight.add_(1e-4)  # as if an optimizer step ran without enforce()
    unenforced = cm.model.fc1.weight.clone()
    save(cm, tmp_path / "m.safetensors")
    assert torch.equal(cm.model.fc1.weight, unenforced)
    cm.enforce()
    assert_bit_exact(load_checkpoint(tmp_path / "m.safetensors", runtime="dense")[0], cm.model)


def test_negative_zero_and_empty_layers_survive(lenet, tmp_path):
    with torch.no_grad():
        lenet.fc3.weight.zero_()
        lenet.fc2.weight[0, :5] = -0.0
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.3, "include": "fc1"}])
    save(cm, tmp_path / "m.safetensors")
    manifest = read_manifest(tmp_path / "m.safetensors")
    assert manifest["tensors"]["fc3.weight"]["nnz"] == 0
    assert_bit_exact(load_checkpoint(tmp_path / "m.safetensors", runtime="dense")[0], cm.model)


@pytest.mark.parametrize(
    ("sparsity", "encoding"), [(0.0, "dense"), (0.5, "bitmask"), (0.95, "index")]
)
def test_the_smallest_encoding_is_chosen(lenet, tmp_path, sparsity, encoding):
    cm = apply_strategy(
        lenet, [{"op": "prune", "sparsity": sparsity, "scope": "layer"}, {"op": "quantize"}]
    )
    save(cm, tmp_path / "m.safetensors")
    entries = read_manifest(tmp_path / "m.safetensors")["tensors"]
    assert entries["fc1.weight"]["encoding"] == encoding
    for name, tensor in cm.model.state_dict().items():
        candidates = candidate_encodings(name, tensor, cm.storage_dtype(name))
        sizes = {enc: stored_bytes(stored) for enc, stored in candidates.items()}
        assert sizes[entries[name]["encoding"]] == min(sizes.values()), name


@pytest.mark.parametrize("version", [2, 3])
def test_v2_is_plain_safetensors_and_loading_never_unpickles(lenet, tmp_path, monkeypatch, version):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}, {"op": "quantize"}])
    path = tmp_path / "m.safetensors"
    save(cm, path, format_version=version)
    if version == 2:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            manifest = json.loads(f.metadata()["autocompress"])
        assert {"fc1.weight.values", "fc1.bias"} <= keys
        assert manifest["format"] == "autocompress-packed" and manifest["version"] == 2

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert_bit_exact(load_checkpoint(path, runtime="dense")[0], cm.model)


def write_with_manifest(path, manifest, tensors=None):
    tensors = tensors if tensors is not None else {"x": torch.zeros(1)}
    metadata = (
        None
        if manifest is None
        else {"autocompress": manifest if isinstance(manifest, str) else json.dumps(manifest)}
    )
    save_file(tensors, str(path), metadata=metadata)


def test_bad_files_are_refused_with_a_clear_error(lenet, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="not a valid autocompress checkpoint"):
        load_checkpoint(garbage)

    cases = {
        "no-manifest": None,
        "not-json": "{oops",
        "wrong-format": {"format": "other", "version": 1},
        "future-version": {"format": "autocompress-packed", "version": 4},
        "unknown-arch": {
            "format": "autocompress-packed",
            "version": 1,
            "architecture": "gpt",
            "config": {},
            "tensors": {},
        },
    }
    for name, manifest in cases.items():
        path = tmp_path / f"{name}.safetensors"
        write_with_manifest(path, manifest)
        with pytest.raises(ValueError, match="not a valid autocompress checkpoint"):
            load_checkpoint(path)


def test_inconsistent_tensors_are_refused(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.95}])
    good = tmp_path / "good.safetensors"
    save(cm, good, format_version=2)
    manifest = read_manifest(good)
    with safe_open(str(good), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    lying = json.loads(json.dumps(manifest))
    lying["tensors"]["fc1.weight"]["nnz"] += 1
    write_with_manifest(tmp_path / "nnz.safetensors", lying, tensors)
    with pytest.raises(ValueError, match="fc1.weight: positions, values and nnz disagree"):
        load_checkpoint(tmp_path / "nnz.safetensors")

    missing = dict(tensors)
    del missing["fc2.bias"]
    write_with_manifest(tmp_path / "missing.safetensors", manifest, missing)
    with pytest.raises(ValueError, match="'fc2.bias' is missing"):
        load_checkpoint(tmp_path / "missing.safetensors")

    wrong_config = json.loads(json.dumps(manifest))
    wrong_config["config"] = {"in_features": 64}
    write_with_manifest(tmp_path / "shape.safetensors", wrong_config, tensors)
    with pytest.raises(ValueError, match="not a valid autocompress checkpoint"):
        load_checkpoint(tmp_path / "shape.safetensors")


def test_saving_a_model_that_does_not_match_its_config_is_refused(lenet, tmp_path):
    with pytest.raises(ValueError, match="does not match lenet-300-100"):
        save(
            CompressedModel(lenet),
            tmp_path / "m.safetensors",
            arch=("lenet-300-100", {"num_classes": 5}),
        )


@pytest.mark.parametrize("sparsity", [0.9, 0.95])
def test_sparse_float16_lenet_is_at_least_ten_times_smaller(lenet, tmp_path, sparsity):
    dense = save_dense_checkpoint(
        lenet, tmp_path / "d.safetensors", architecture="lenet-300-100", config={}
    )
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": sparsity}, {"op": "quantize"}])
    packed = save(cm, tmp_path / "p.safetensors")
    assert dense > 1_066_000
    assert dense / packed >= 10


def test_plain_uploaded_weights_load_and_mismatches_are_named(lenet, tmp_path):
    path = tmp_path / "upload.safetensors"
    save_file(lenet.state_dict(), str(path))
    loaded = load_weights(path, "lenet-300-100", {})
    assert_bit_exact(loaded, lenet)
    half = {k: v.half() for k, v in lenet.state_dict().items()}
    save_file(half, str(path))
    assert torch.equal(
        load_weights(path, "lenet-300-100", {}).fc1.weight, half["fc1.weight"].float()
    )
    with pytest.raises(ValueError, match=r"wrong shapes \(1\): fc1\.weight \[300, 784\] \(expected \[300, 64\]\)$"):
        load_weights(path, "lenet-300-100", {"in_features": 64})
