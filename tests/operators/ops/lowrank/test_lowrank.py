"""``lowrank``: truncated-SVD factors (the oracle: Eckart-Young), packed equals dense, the
factors train under masked fine-tuning, checkpoints round-trip, and later ops compose."""

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy, validate_steps
from operators.format.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.models.zoo import build_model
from operators.ops.lowrank.algorithm import low_rank_factors, rank_for_energy, singular_values
from operators.ops.lowrank.layer import LowRankLayer
from operators.runtime import packed_model
from operators.train.finetune import finetune

MLP = ("mlp", {"in_features": 32, "hidden": [48, 40], "num_classes": 5})


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return build_model(*MLP)


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_factors_give_the_best_rank_r_approximation(rank):
    torch.manual_seed(1)
    w = torch.randn(30, 20, dtype=torch.float64)
    a, b = low_rank_factors(w, rank)
    assert a.shape == (30, rank) and b.shape == (rank, 20)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    torch.testing.assert_close(a @ b, best)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values
    assert torch.isclose(torch.linalg.norm(w - a @ b), s[rank:].pow(2).sum().sqrt())


def test_rank_for_energy_is_the_smallest_rank_that_keeps_it():
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(sigma, 9 / 14) == 1
    assert rank_for_energy(sigma, 0.65) == 2
    assert rank_for_energy(sigma, 13 / 14) == 2
    assert rank_for_energy(sigma, 1.0) == 3
    assert rank_for_energy(singular_values(torch.zeros(4, 4)), 0.9) == 1


@pytest.mark.parametrize(
    "step, message",
    [
        ({"op": "lowrank"}, "exactly one of rank"),
        ({"op": "lowrank", "rank": 2, "energy": 0.5}, "exactly one of rank"),
        ({"op": "lowrank", "rank": 0}, "rank"),
        ({"op": "lowrank", "rank": True}, "rank"),
        ({"op": "lowrank", "energy": 0.0}, "energy"),
        ({"op": "lowrank", "energy": 1.5}, "energy"),
    ],
)
def test_invalid_parameters_are_named(step, message):
    with pytest.raises(ValueError, match=message):
        validate_steps([step])


def test_linear_layers_become_factored_and_the_output_layer_is_left_alone():
    model = mlp()
    cm = apply_strategy(model, [{"op": "lowrank", "rank": 4}])
    assert isinstance(cm.model.fc1, LowRankLayer) and cm.model.fc1.rank == 4
    assert isinstance(cm.model.fc2, LowRankLayer)
    assert type(cm.model.fc3) is nn.Linear  # the classifier
    report = cm.report[0]
    assert set(report["layers"]) == {"fc1", "fc2"} and report["skipped"] == {"fc3": "output layer"}
    w = model.fc1.weight.detach()
    a, b = low_rank_factors(w, 4)
    torch.testing.assert_close(cm.model.fc1.product(), a @ b)
    assert isinstance(model.fc1, nn.Linear)  # the input model is untouched


def test_energy_chooses_the_rank_and_ranks_that_do_not_shrink_are_skipped():
    cm = apply_strategy(mlp(), [{"op": "lowrank", "energy": 1.0}])
    assert cm.report[0]["layers"] == {}
    assert all("would not make it smaller" in why for n, why in cm.report[0]["skipped"].items() if n != "fc3")
    cm = apply_strategy(mlp(), [{"op": "lowrank", "energy": 0.5}])
    for name, layer in cm.report[0]["layers"].items():
        assert layer["energy"] >= 0.5 and layer["rank"] == cm.model.get_submodule(name).rank


def test_conv_layers_factor_through_a_one_by_one_conv():
    torch.manual_seed(0)
    model = build_model("lenet-5", {"image_size": 16})
    x = torch.randn(4, 1, 16, 16)
    cm = apply_strategy(model, [{"op": "lowrank", "rank": 3, "include": "conv2"}], example_input=x)
    (name,) = cm.report[0]["layers"]
    original, layer = model.get_submodule(name), cm.model.get_submodule(name)
    assert layer.first.kernel_size == original.kernel_size and layer.second.kernel_size == (1, 1)
    w = original.weight.detach()
    a, b = low_rank_factors(w.reshape(w.shape[0], -1), 3)
    torch.testing.assert_close(layer.product(), (a @ b).reshape(w.shape))
    captured = {}  # the input that reaches the layer
    handle = original.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        expected = nn.functional.conv2d(
            captured["x"], layer.product(), original.bias, original.stride, original.padding
        )
        torch.testing.assert_close(layer(captured["x"]), expected, atol=1e-5, rtol=1e-5)


def test_packed_forward_equals_dense_forward_and_checkpoint_round_trips(tmp_path):
    cm = apply_strategy(mlp(), [{"op": "lowrank", "rank": 4}, {"op": "quantize", "dtype": "float16"}])
    x = torch.randn(7, 32)
    with torch.no_grad():
        expected = cm.model(x)
        packed = packed_model(cm, runtime="packed")
        torch.testing.assert_close(packed(x), expected)
    path = tmp_path / "lowrank.safetensors"
    size = save_checkpoint(cm, path, architecture=MLP[0], config=MLP[1])
    assert size == path.stat().st_size
    manifest = read_manifest(path)
    assert manifest["modules"]["fc1"] == {
        "kind": "lowrank",
        "args": {"layer": "linear", "shape": {"in_features": 32, "out_features": 48, "bias": True}, "rank": 4},
    }
    assert manifest["tensors"]["fc1.first.weight"]["shape"] == [4, 32]
    assert manifest["tensors"]["fc1.second.weight"]["dtype"] == "float16"
    for runtime in ("dense", "packed", "auto"):
        loaded, _ = load_checkpoint(path, runtime=runtime)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected)
    dense_size = sum(p.numel() * 4 for p in mlp().parameters())
    assert size < dense_size / 2


def test_later_ops_compress_the_factors_and_the_file_reloads(tmp_path):
    steps = [{"op": "lowrank", "rank": 6}, {"op": "prune", "sparsity": 0.5}, {"op": "cluster", "bits": 3}]
    cm = apply_strategy(mlp(), steps)
    assert "fc1.first.weight" in cm.masks and "fc1.second" in cm.packing
    path = tmp_path / "lowrank-cluster.safetensors"
    save_checkpoint(cm, path, architecture=MLP[0], config=MLP[1])
    manifest = read_manifest(path)
    assert manifest["modules"]["fc1"]["kind"] == "lowrank"
    assert manifest["modules"]["fc1.second"]["kind"] == "clustered"
    x = torch.randn(5, 32)
    loaded, _ = load_checkpoint(path, runtime="packed")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cm.model(x), atol=1e-5, rtol=1e-5)


def test_compressing_a_layer_before_lowrank_is_refused():
    with pytest.raises(ValueError, match="put lowrank first"):
        apply_strategy(mlp(), [{"op": "prune", "sparsity": 0.5}, {"op": "lowrank", "rank": 2}])


def test_masked_fine_tuning_trains_the_factors(tiny_mlp_data):
    cm = apply_strategy(mlp(), [{"op": "lowrank", "rank": 4}])
    before = cm.model.fc1.first.weight.detach().clone(), cm.model.fc1.second.weight.detach().clone()
    finetune(cm, tiny_mlp_data, method="masked", epochs=1, lr=0.05, batch_size=16)
    assert not torch.equal(cm.model.fc1.first.weight, before[0])
    assert not torch.equal(cm.model.fc1.second.weight, before[1])
    assert isinstance(cm.model.fc1, LowRankLayer) and cm.model.fc1.rank == 4


@pytest.fixture
def tiny_mlp_data(make_dataset):
    return make_dataset(n_train=64, n_val=32, shape=(32,), num_classes=5)
