"""The ``unify`` op: micro-structured weight unification and pruning.

Each selected Linear / Conv2d weight (viewed 2-D, conv as ``(C_out, C_in*k*k)``) is cut
into ``block = [rows, cols]`` blocks; ``round(unify_ratio * B)`` of them become *unified*
(signs kept, one shared magnitude) and ``round(prune_ratio * B)`` *pruned* (zero), chosen by
the exact projection :func:`operators.ops.unify.algorithm.project_unify`. Pruned blocks also enter
``cm.masks``. Fine-tuning holds the pattern (:class:`UnifiedBlocks`: a unified block trains
its one magnitude, with gradient ``sum_i s_i dL/dw_i``). Ops that change values afterwards
(pruning, int8) would break the structure and are refused when the checkpoint is written.

Stored as kind ``unified`` (:mod:`operators.ops.unify.packed`): 2-bit block states, one sign bit per unified weight, one scale
per unified block and the kept blocks' values (both in the weight's storage dtype).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import CompressedModel, Constraint, PackSpec
from operators.core.op import Op, add_mask, check_number, selected_weights
from operators.core.registry import register
from operators.ops.unify.algorithm import (
    KEEP,
    PRUNE,
    UNIFY,
    UnifyState,
    _signs,
    check_block,
    enforce_unified,
    project_unify,
)
from operators.ops.unify.packed import UnifiedLayer


class UnifiedBlocks(Constraint):
    """A weight with a fixed unification pattern (:class:`operators.ops.unify.algorithm.UnifyState`)."""

    def __init__(self, state: UnifyState, weight: torch.Tensor) -> None:
        self.state = state
        self.signs = _signs(weight.detach().reshape(weight.shape[0], -1).cpu())
        self.element_states = state.element_states()

    def _block_sums(self, mat: torch.Tensor) -> torch.Tensor:
        (m, n), (r, c) = self.state.matrix_shape, self.state.block
        gr, gc = self.state.grid
        padded = mat.new_zeros(gr * r, gc * c)
        padded[:m, :n] = mat
        return padded.reshape(gr, r, gc, c).sum(dim=(1, 3)).reshape(-1)

    def project_(self, tensor: torch.Tensor) -> None:
        out = enforce_unified(tensor, self.state)
        self.signs = _signs(out.detach().reshape(out.shape[0], -1).cpu())
        tensor.copy_(out)

    def grad(self, grad: torch.Tensor) -> torch.Tensor:
        mat = grad.reshape(grad.shape[0], -1)
        signs = self.signs.to(mat)
        sums = self._block_sums(signs * mat)
        per_block = UnifyState(self.state.shape, self.state.block, self.state.states, sums)
        states = self.element_states.to(mat.device)
        out = torch.where(states == UNIFY, signs * per_block.element_scales().to(mat), mat)
        out = torch.where(states == PRUNE, torch.zeros_like(mat), out)
        return out.reshape(grad.shape)


@register
@dataclass(frozen=True, kw_only=True)
class Unify(Op):
    """Unify ``unify_ratio`` and prune ``prune_ratio`` of each selected weight's blocks."""

    name: ClassVar[str] = "unify"
    PACKERS: ClassVar[dict] = {"unify": {nn.Linear: UnifiedLayer, nn.Conv2d: UnifiedLayer}}
    block: list[int] = field(default_factory=lambda: [1, 4])
    unify_ratio: float
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_block(self.block)
        check_number("unify_ratio", self.unify_ratio, 0.0, 1.0, high_inclusive=True)
        check_number("prune_ratio", self.prune_ratio, 0.0, 1.0, high_inclusive=True)
        if self.unify_ratio + self.prune_ratio > 1:
            raise ValueError(
                f"unify_ratio: unify_ratio + prune_ratio must be <= 1, got "
                f"{self.unify_ratio} + {self.prune_ratio}"
            )

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        block = (int(self.block[0]), int(self.block[1]))
        layers = {}
        for name, module_name, param in selected_weights(self, cm):
            if name in cm.masks:
                raise ValueError(f"unify: must come before ops that mask {name} (prune, ...)")
            weight = cm.project(name, param)
            projected, state = project_unify(weight.cpu(), block, self.unify_ratio, self.prune_ratio)
            with torch.no_grad():
                param.copy_(projected)
            cm.constraints[name] = UnifiedBlocks(state, projected)
            keep = (state.element_states() != PRUNE).reshape(param.shape).to(param.device)
            add_mask(cm, name, keep)
            cm.packing[module_name] = PackSpec("unify", {"block": list(block)}, {"states": state.states})
            counts = torch.bincount(state.states.long(), minlength=3)
            layers[module_name] = {"kept": int(counts[KEEP]), "unified": int(counts[UNIFY]),
                                   "pruned": int(counts[PRUNE])}  # fmt: skip
        return {"blocks": layers}
