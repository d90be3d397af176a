"""The packed kinds of ``mpd``: the mask is a permuted block diagonal, and MPDLinear /
MPDConv2d compute exactly what the dense masked layer does."""

import pytest
import torch
from torch import nn

from operators.core.model import PackSpec
from operators.ops.mpd.packed import MPDConv2d, MPDLinear, block_bounds, mpd_mask


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
        dense.weight.mul_(
            mpd_mask(rows, cols, k, spec.tensors["row_perm"], spec.tensors["col_perm"])
        )
    packed = MPDLinear.pack(dense, spec)
    x = torch.randn(5, cols)
    torch.testing.assert_close(packed(x), dense(x), atol=1e-5, rtol=0)
    assert torch.equal(packed.to_dense().weight, dense.weight)
    if rows % k == 0 and cols % k == 0:
        assert packed.blocks.numel() == rows * cols // k
        assert packed.executed_macs(packed(x)) == 5 * rows * cols // k


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
    assert torch.equal(packed.to_dense().weight, dense.weight)
    y = packed(x)  # each output position reads one block of 12/4 input channels x 3x3
    assert packed.executed_macs(y) == 2 * 5 * 5 * 20 * 3 * 9
