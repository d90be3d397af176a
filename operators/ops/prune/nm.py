"""``nm_prune``: N:M semi-structured sparsity, exactly ``n`` kept in every ``m`` consecutive weights.

N:M groups are ``m`` consecutive entries of one filter's reduction axis (the weight viewed
``(out, in * kernel)``: the layout of NVIDIA's 2:4 sparse tensor cores). A mask held by masked
fine-tuning like ``prune``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from operators.core.model import CompressedModel
from operators.core.op import Op, add_mask, check_int, weight_names
from operators.core.registry import register


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
        check_int("m", self.m, 1)
        check_int("n", self.n, 1)
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
