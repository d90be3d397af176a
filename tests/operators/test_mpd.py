"""MPDCompress: mask oracles, packed forward == dense masked forward, folds, storage."""

import pytest
import torch
from torch import nn

from operators.checkpoint import load_checkpoint, pack_model, save_checkpoint
from operators.packed import MPDConv2d, MPDLinear, PackSpec, block_bounds, mpd_mask
from operators.runtime import fold_permutations, select_runtime
from operators.strategy import apply_strategy
from operators.zoo import build_model


@pytest.mark.parametrize(("rows", "cols", "k"), [(30, 40, 10), (300, 784, 10), (7, 5, 3)])
def test_mask_rows_columns_density_and_block_diagonal(rows, cols, k):
    g = torch.Generator().manual_seed(1)
    p, q = torch.randperm(rows, generator=g), torch.randperm(cols, generator=g)
    mask = mpd_mask(rows, cols, k, p, q)
    rb, cb = block_bounds(rows, k), block_bounds(cols, k)
    diag = torch.block_diag(*[torch.ones(rb[b + 1] - rb[b], cb[b + 1] - cb[b]) for b in range(k)])
    assert torch.equal(mask[p][:, q], diag.bool())  # un-permuting gives D exactly
    sizes = [(rb[b + 1] - rb[b]) * (cb[b + 1] - cb[b]) for b in range(k)]
    assert int(mask.sum()) == sum(sizes)
    if rows % k == 0 and cols % k == 0:
        assert (mask.sum(1) == cols // k).all() and (mask.sum(0) == rows // k).all()
        assert mask.float().mean() == pytest.approx(1 / k)
    else:  # each row holds exactly its block's columns, each column its block's rows
        row_len = {int(p[i]): cb[b + 1] - cb[b] for b in range(k) for i in range(rb[b], rb[b + 1])}
        assert all(int(mask[r].sum()) == n for r, n in row_len.items())


def _spec(rows, cols, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return PackSpec(
        "mpd",
        {"blocks": k},
        {"row_perm": torch.randperm(rows, generator=g).int(),
         "col_perm": torch.randperm(cols, generator=g).int()},
    )  # fmt: skip


@pytest.mark.parametrize(("rows", "cols", "k"), [(40, 60, 10), (37, 23, 4)])
def test_packed_linear_equals_dense_masked(rows, cols, k):
    torch.manual_seed(0)
    dense = nn.Linear(cols, rows)
    spec = _spec(rows, cols, k)
    with torch.no_grad():
        dense.weight.mul_(mpd_mask(rows, cols, k, spec.tensors["row_perm"], spec.tensors["col_perm"]))
    packed = MPDLinear.pack(dense, spec)
    x = torch.randn(5, cols)
    torch.testing.assert_close(packed(x), dense(x), atol=1e-5, rtol=0)
    assert torch.equal(packed.to_dense().weight, dense.weight)
    if rows % k == 0 and cols % k == 0:
        assert packed.blocks.numel() == rows * cols // k


def test_packed_conv_is_a_grouped_conv_between_channel_permutations():
    torch.manual_seed(0)
    dense = nn.Conv2d(12, 20, 3, padding=1, stride=2)
    spec = _spec(20, 12, 4)
    mask = mpd_mask(20, 12, 4, spec.tensors["row_perm"], spec.tensors["col_perm"])
    with torch.no_grad():
        dense.weight.mul_(mask[:, :, None, None])
    packed = MPDConv2d.pack(dense, spec)
    x = torch.randn(2, 12, 9, 9)
    torch.testing.assert_close(packed(x), dense(x), atol=1e-5, rtol=0)


def test_folding_permutations_between_layers_keeps_outputs():
    torch.manual_seed(0)
    model = build_model("vgg-cifar", {"width": 0.125}).eval()
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 4, "exclude": "^conv1$|fc"}])
    packed = pack_model(cm).eval()
    x = torch.randn(2, 3, 32, 32)
    want = cm.model.eval()(x)
    assert fold_permutations(packed) >= 5
    torch.testing.assert_close(packed(x), want, atol=1e-5, rtol=1e-5)
    mlp = build_model("mlp", {"in_features": 64, "hidden": [48, 40]})
    cm = apply_strategy(mlp, [{"op": "mpd", "blocks": 4}])
    packed = select_runtime(pack_model(cm).eval(), "packed")
    assert packed.fc1.skip_output_gather  # fc2 is followed by the dense output layer
    assert isinstance(packed.fc2, MPDLinear) and not packed.fc2.skip_output_gather
    x = torch.randn(3, 64)
    torch.testing.assert_close(packed(x), cm.model(x), atol=1e-5, rtol=0)


def test_mpd_checkpoint_stores_blocks_and_permutations(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet-300-100", {})
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 10}, {"op": "quantize"}])
    path = tmp_path / "m.safetensors"
    save_checkpoint(cm, path, architecture="lenet-300-100", config={})
    loaded, manifest = load_checkpoint(path, runtime="packed")
    assert manifest["modules"]["fc1"]["kind"] == "mpd_linear"
    assert manifest["tensors"]["fc1.blocks"]["dtype"] == "float16"
    assert isinstance(loaded.fc1, MPDLinear)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), cm.model(x), atol=1e-5, rtol=0)
    dense_bytes = 266_610 * 4
    assert path.stat().st_size < dense_bytes / 15  # 1/10 of the weights, in float16
    assert cm.report[0]["density"]["fc1"] == pytest.approx(0.1, abs=1e-3)


def test_output_layer_stays_dense_unless_include_names_it():
    model = build_model("lenet-300-100", {})
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 10}])
    assert set(cm.packing) == {"fc1", "fc2"} and "fc3" in cm.report[0]["skipped"]
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 10, "include": "fc"}])
    assert set(cm.packing) == {"fc1", "fc2", "fc3"}
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 10, "exclude": "fc1"}])
    assert set(cm.packing) == {"fc2"}
