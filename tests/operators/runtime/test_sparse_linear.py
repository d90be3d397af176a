"""SparseLinear, the CSR runtime form of a mostly-zero Linear: the same outputs, the same dense
layer back, and MACs counted over the stored nonzeros only."""

import torch
from torch import nn

from operators.runtime.sparse import SparseLinear


def sparse_linear(bias: bool = True) -> tuple[nn.Linear, SparseLinear]:
    torch.manual_seed(0)
    dense = nn.Linear(30, 12, bias=bias)
    with torch.no_grad():
        dense.weight.mul_(torch.rand(12, 30) < 0.2)
    return dense, SparseLinear(dense)


def test_outputs_equal_the_dense_layer_for_any_leading_shape():
    dense, sparse = sparse_linear()
    for shape in ((1, 30), (7, 30), (2, 3, 30)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), dense(x), atol=1e-6, rtol=1e-5)
    _, no_bias = sparse_linear(bias=False)
    assert no_bias.bias is None and no_bias(torch.randn(4, 30)).shape == (4, 12)


def test_to_dense_gives_the_layer_back_and_macs_count_nonzeros():
    dense, sparse = sparse_linear()
    back = sparse.to_dense()
    assert torch.equal(back.weight, dense.weight) and torch.equal(back.bias, dense.bias)
    nnz = int((dense.weight != 0).sum())
    assert 0 < nnz < 0.5 * dense.weight.numel()
    assert sparse.executed_macs(torch.zeros(5, 12)) == 5 * nnz
