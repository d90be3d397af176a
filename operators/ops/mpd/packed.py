"""The packed kinds of ``mpd``: ``mpd_linear`` and ``mpd_conv2d``, permuted block-diagonal
layers stored as k dense blocks plus the row and column permutations."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.model import PackSpec
from operators.core.registry import PackedModule, register_kind


def block_bounds(size: int, blocks: int) -> list[int]:
    """Start offsets (and the end) of ``blocks`` near-equal consecutive blocks of ``size``."""
    return [size * b // blocks for b in range(blocks + 1)]


def mpd_mask(rows: int, cols: int, blocks: int, row_perm: torch.Tensor, col_perm: torch.Tensor):
    """Keep-mask ``M`` with ``M[p[i], q[j]] = D[i, j]``, ``D`` the k-block block diagonal."""
    row_block = torch.empty(rows, dtype=torch.long)
    col_block = torch.empty(cols, dtype=torch.long)
    rb, cb = block_bounds(rows, blocks), block_bounds(cols, blocks)
    for b in range(blocks):
        row_block[row_perm[rb[b] : rb[b + 1]].long()] = b
        col_block[col_perm[cb[b] : cb[b + 1]].long()] = b
    return row_block[:, None] == col_block[None, :]


class _MPD(PackedModule):
    """Shared state of MPD layers: k padded dense blocks, the row and column permutations.

    ``blocks`` holds block ``b`` at rows ``b*mb .. b*mb+m_b`` and its first ``n_b`` columns
    (``mb``/``nb`` the largest block sizes; padding is zero, so uneven blocks still run as one
    batched product). Forward: one gather of the input in column-permutation order (padded),
    one batched product over the k blocks, then one gather of the output rows back.

    Folds (:func:`operators.runtime.fold_permutations`): ``skip_output_gather`` leaves the
    output in padded block order (``k * mb`` wide) and :meth:`fold_input_gather` makes the
    next layer read that order.
    """

    SOURCES: ClassVar[dict[str, str]] = {"blocks": "weight", "bias": "bias"}
    FOLDABLE: ClassVar[bool] = True

    def _init_mpd(self, rows: int, cols: int, blocks: int, bias: bool, tail: tuple) -> None:
        if not 1 <= blocks <= min(rows, cols):
            raise ValueError(f"blocks must be in [1, {min(rows, cols)}], got {blocks}")
        self.rows, self.cols, self.nblocks = rows, cols, blocks
        self.mb, self.nb = math.ceil(rows / blocks), math.ceil(cols / blocks)
        self.blocks = nn.Parameter(torch.zeros(blocks * self.mb, self.nb, *tail))
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None
        self.register_buffer("row_perm", torch.arange(rows, dtype=torch.int32))
        self.register_buffer("col_perm", torch.arange(cols, dtype=torch.int32))
        self.skip_output_gather = False
        self._runtime: dict[str, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.invalidate())

    @property
    def padded_rows(self) -> int:
        """Width of the output in padded block order (when its output gather is skipped)."""
        return self.nblocks * self.mb

    def invalidate(self) -> None:
        """Forget the derived gather indices (after the stored tensors changed)."""
        self._runtime = None

    def _apply(self, fn, recurse=True):  # keep derived tensors (and folds) next to the weights
        if self._runtime is not None:
            self._runtime = {k: None if v is None else fn(v) for k, v in self._runtime.items()}
        return super()._apply(fn, recurse)

    def gathers(self) -> dict[str, torch.Tensor]:
        """Derived long tensors: ``gather_in`` (k*nb), ``gather_out`` (rows), ``bias_padded``."""
        if self._runtime is None:
            with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference
                self._runtime = self._compute_gathers()
        return self._runtime

    def _compute_gathers(self) -> dict[str, torch.Tensor | None]:
        device = self.blocks.device
        rb, cb = block_bounds(self.rows, self.nblocks), block_bounds(self.cols, self.nblocks)
        col_perm, row_perm = self.col_perm.long().cpu(), self.row_perm.long().cpu()
        gather_in = torch.zeros(self.nblocks * self.nb, dtype=torch.long)
        padded_pos = torch.empty(self.rows, dtype=torch.long)
        for b in range(self.nblocks):
            gather_in[b * self.nb : b * self.nb + cb[b + 1] - cb[b]] = col_perm[cb[b] : cb[b + 1]]
            padded_pos[rb[b] : rb[b + 1]] = torch.arange(rb[b + 1] - rb[b]) + b * self.mb
        gather_out = torch.empty(self.rows, dtype=torch.long)
        gather_out[row_perm] = padded_pos
        bias_padded = None
        if self.bias is not None:
            bias_padded = torch.zeros(self.nblocks * self.mb, dtype=self.bias.dtype)
            bias_padded[gather_out] = self.bias.detach().cpu()
            bias_padded = bias_padded.to(device)
        return {
            "gather_in": gather_in.to(device),
            "gather_out": gather_out.to(device),
            "bias_padded": bias_padded,
        }

    def fold_input_gather(self, previous_gather_out: torch.Tensor) -> None:
        """Read the input in the previous MPD layer's padded order (its output gather folded)."""
        runtime = self.gathers()
        runtime["gather_in"] = previous_gather_out[runtime["gather_in"]]

    def to_dense(self) -> nn.Module:
        dense = self._plain_like(self.cols, self.rows, self.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.to(self.blocks.device)

    def _plain_like(self, in_width: int, out_width: int, bias: bool) -> nn.Module:
        """An empty plain layer of this module's type and hyper-parameters."""
        raise NotImplementedError

    def _load_from_dense(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: PackSpec):
        with torch.no_grad():
            self.row_perm.copy_(spec.tensors["row_perm"])
            self.col_perm.copy_(spec.tensors["col_perm"])
            rb, cb = block_bounds(self.rows, self.nblocks), block_bounds(self.cols, self.nblocks)
            p, q = self.row_perm.long(), self.col_perm.long()
            for b in range(self.nblocks):
                rows, cols = p[rb[b] : rb[b + 1]], q[cb[b] : cb[b + 1]]
                self.blocks[b * self.mb : b * self.mb + len(rows), : len(cols)] = weight[rows][
                    :, cols
                ]
            if bias is not None:
                self.bias.copy_(bias)
        self.invalidate()

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense (masked) weight, rows x cols (x kernel)."""
        rb, cb = block_bounds(self.rows, self.nblocks), block_bounds(self.cols, self.nblocks)
        p, q = self.row_perm.long(), self.col_perm.long()
        weight = self.blocks.new_zeros(self.rows, self.cols, *self.blocks.shape[2:])
        for b in range(self.nblocks):
            rows, cols = p[rb[b] : rb[b + 1]], q[cb[b] : cb[b + 1]]
            block = self.blocks[b * self.mb : b * self.mb + len(rows), : len(cols)]
            weight[rows[:, None], cols[None, :]] = block
        return weight

    def _finish(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        if self.skip_output_gather:
            return y
        return y.index_select(dim, self.gathers()["gather_out"])


@register_kind
class MPDLinear(_MPD):
    """A Linear layer with an MPD mask: gather, ``bmm`` over k blocks, gather back."""

    kind: ClassVar[str] = "mpd_linear"

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True):
        super().__init__()
        self._init_mpd(out_features, in_features, blocks, bias, ())

    @classmethod
    def pack(cls, dense: nn.Module, spec: PackSpec) -> MPDLinear:
        module = cls(dense.in_features, dense.out_features, spec.args["blocks"],
                     dense.bias is not None)  # fmt: skip
        module._load_from_dense(dense.weight.detach(), _detached(dense.bias), spec)
        return module

    def config(self) -> dict[str, Any]:
        return {"in_features": self.cols, "out_features": self.rows, "blocks": self.nblocks,
                "bias": self.bias is not None}  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        runtime = self.gathers()
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).index_select(1, runtime["gather_in"])
        xk = x.view(-1, self.nblocks, self.nb).transpose(0, 1)  # k x B x nb
        wk = self.blocks.view(self.nblocks, self.mb, self.nb).transpose(1, 2)  # k x nb x mb
        if runtime["bias_padded"] is not None:
            bias = runtime["bias_padded"].view(self.nblocks, 1, self.mb)
            yk = torch.baddbmm(bias, xk, wk)
        else:
            yk = torch.bmm(xk, wk)
        y = yk.transpose(0, 1).reshape(-1, self.nblocks * self.mb)
        return self._finish(y, 1).reshape(*lead, -1)

    def _plain_like(self, in_width: int, out_width: int, bias: bool) -> nn.Linear:
        return nn.Linear(in_width, out_width, bias=bias)

    def executed_macs(self, output: torch.Tensor) -> int:
        samples = output.numel() // output.shape[-1]
        return samples * self.nblocks * self.mb * self.nb


@register_kind
class MPDConv2d(_MPD):
    """A Conv2d with an MPD channel mask: channel gather, grouped conv (groups=k), gather."""

    kind: ClassVar[str] = "mpd_conv2d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list[int],
        blocks: int,
        stride: list[int] = (1, 1),
        padding: list[int] = (0, 0),
        dilation: list[int] = (1, 1),
        bias: bool = True,
    ):
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self._init_mpd(out_channels, in_channels, blocks, bias, self.kernel_size)

    @classmethod
    def pack(cls, dense: nn.Module, spec: PackSpec) -> MPDConv2d:
        if dense.groups != 1 or dense.padding_mode != "zeros" or isinstance(dense.padding, str):
            raise ValueError("mpd: only zero-padded Conv2d with groups=1 can be packed")
        module = cls(dense.in_channels, dense.out_channels, list(dense.kernel_size),
                     spec.args["blocks"], list(dense.stride), list(dense.padding),
                     list(dense.dilation), dense.bias is not None)  # fmt: skip
        module._load_from_dense(dense.weight.detach(), _detached(dense.bias), spec)
        return module

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.cols, "out_channels": self.rows,
                "kernel_size": list(self.kernel_size), "blocks": self.nblocks,
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias is not None}  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channel gathers on the NHWC view: the grouped conv then runs channels-last (much
        # faster than NCHW for few channels per group on CPU), and so does its output.
        runtime = self.gathers()
        x = x.permute(0, 2, 3, 1).index_select(3, runtime["gather_in"]).permute(0, 3, 1, 2)
        y = F.conv2d(x, self.blocks, runtime["bias_padded"], self.stride, self.padding,
                     self.dilation, self.nblocks)  # fmt: skip
        return self._finish(y.permute(0, 2, 3, 1), 3).permute(0, 3, 1, 2)

    def _plain_like(self, in_width: int, out_width: int, bias: bool) -> nn.Conv2d:
        return nn.Conv2d(in_width, out_width, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=bias)  # fmt: skip

    def executed_macs(self, output: torch.Tensor) -> int:
        return output.numel() // output.shape[1] * self.nblocks * self.mb * self.nb * math.prod(
            self.kernel_size
        )


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()
