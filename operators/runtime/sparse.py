"""A runtime form of a mostly-zero Linear layer: its weight as a CSR sparse matrix.

It is never stored (the file keeps the weight bitmask- or index-encoded); the loader's
:func:`operators.runtime.select_runtime` offers it as a candidate for Linear layers with at
most half their weights nonzero, and keeps it where it was measured faster.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from operators.core.registry import PackedModule


class SparseLinear(PackedModule):
    """A Linear layer whose weight runs as a CSR sparse matrix: a runtime form, never stored
    (the file keeps the weight bitmask- or index-encoded; the loader may choose this form)."""

    def __init__(self, dense: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = dense.in_features, dense.out_features
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.weight_csr = dense.weight.detach().to_sparse_csr()
        self.bias = None if dense.bias is None else nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.weight_csr, x.reshape(-1, x.shape[-1]).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.weight_csr = fn(self.weight_csr)
        return super()._apply(fn, recurse)

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(self.weight_csr.to_dense())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.to(self.weight_csr.device)

    def executed_macs(self, output: torch.Tensor) -> int:
        return output.numel() // output.shape[-1] * int(self.weight_csr.values().numel())
