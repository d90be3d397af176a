"""Semi-structured pruning ops: ``block_prune`` (whole blocks) and ``nm_prune`` (N:M).

Both are masks over the dense weights, held by masked fine-tuning like ``prune``'s. Weights
are viewed as 2-D, ``(out, in * kernel)``: for a Conv layer a block spans rows = filters and
columns = input channel x kernel positions, and N:M groups are ``m`` consecutive entries of
one filter's reduction axis (the layout of NVIDIA's 2:4 sparse tensor cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from operators.strategy import (
    CompressedModel,
    Op,
    add_mask,
    check_choice,
    check_number,
    magnitude_masks,
    register,
    weight_names,
)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def block_view(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``weight`` as 2-D, zero-padded to whole blocks, viewed ``(R, C, rows, cols)``."""
    rows, cols = block
    w2 = weight.reshape(weight.shape[0], -1)
    pad_r, pad_c = -w2.shape[0] % rows, -w2.shape[1] % cols
    w2 = F.pad(w2, (0, pad_c, 0, pad_r))
    return w2.view(w2.shape[0] // rows, rows, w2.shape[1] // cols, cols).permute(0, 2, 1, 3)


def expand_block_mask(keep: torch.Tensor, block: tuple[int, int], shape: torch.Size):
    """A per-block keep mask ``(R, C)`` expanded to a weight of ``shape``."""
    rows, cols = block
    full = keep.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
    flat_cols = shape[1:].numel() if len(shape) > 1 else 1
    return full[: shape[0], :flat_cols].reshape(shape)


@register
@dataclass(frozen=True, kw_only=True)
class BlockPrune(Op):
    """Zero whole ``block = [rows, cols]`` blocks of smallest L2 norm; stored block-sparse."""

    name: ClassVar[str] = "block_prune"
    sparsity: float
    block: tuple[int, int] = (4, 4)
    scope: str = "layer"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("sparsity", self.sparsity, 0.0, 1.0)
        check_choice("scope", self.scope, ("global", "layer"))
        if not isinstance(self.block, (list, tuple)) or len(self.block) != 2:
            raise ValueError(f"block: must be [rows, cols], got {self.block!r}")
        for i, v in enumerate(self.block):
            _check_positive_int(f"block[{i}]", v)
        object.__setattr__(self, "block", tuple(self.block))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        names = weight_names(self, cm)
        params = dict(cm.model.named_parameters())
        weights = [cm.project(n, params[n]) for n in names]
        scores = [block_view(w, self.block).pow(2).sum((2, 3)) for w in weights]
        if self.scope == "global":
            keeps = magnitude_masks(scores, self.sparsity)
        else:
            keeps = [magnitude_masks([s], self.sparsity)[0] for s in scores]
        layers = {}
        for name, keep, weight in zip(names, keeps, weights, strict=True):
            add_mask(cm, name, expand_block_mask(keep, self.block, weight.shape))
            cm.blocks[name] = self.block
            layers[name] = 1 - int(keep.sum()) / keep.numel()
        return {"block_sparsity": layers}


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude entries of every ``m`` consecutive ones of each row."""
    groups = weight.detach().reshape(weight.shape[0], -1, m).abs()
    top = groups.topk(n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(weight.shape)


@register
@dataclass(frozen=True, kw_only=True)
class NMPrune(Op):
    """N:M semi-structured sparsity: exactly ``n`` kept in every ``m`` consecutive weights.

    Layers whose reduction length (in_features, or in_channels x kernel) is not a multiple of
    ``m`` are left alone and listed under ``skipped``.
    """

    name: ClassVar[str] = "nm_prune"
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("m", self.m)
        _check_positive_int("n", self.n)
        if self.n >= self.m:
            raise ValueError(f"n: must be smaller than m={self.m}, got {self.n}")

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        params = dict(cm.model.named_parameters())
        done, skipped = [], []
        for name in weight_names(self, cm):
            weight = cm.project(name, params[name])
            if weight[0].numel() % self.m:
                skipped.append(name)
                continue
            add_mask(cm, name, nm_mask(weight, self.n, self.m))
            done.append(name)
        if not done:
            raise ValueError(f"nm_prune: no selected layer has a reduction length divisible by {self.m}")
        return {"layers": done, "skipped": skipped}
