"""The ``unify`` op: micro-structured weight unification and pruning, with its packed kind.

Each selected Linear / Conv2d weight (viewed 2-D, conv as ``(C_out, C_in*k*k)``) is cut
into ``block = [rows, cols]`` blocks; ``round(unify_ratio * B)`` of them become *unified*
(signs kept, one shared magnitude) and ``round(prune_ratio * B)`` *pruned* (zero), chosen by
the exact projection :func:`operators.unify.project_unify`. Pruned blocks also enter
``cm.masks``. Fine-tuning holds the pattern (:class:`UnifiedBlocks`: a unified block trains
its one magnitude, with gradient ``sum_i s_i dL/dw_i``). Ops that change values afterwards
(pruning, int8) would break the structure and are refused when the checkpoint is written.

Stored as kind ``unified``: 2-bit block states, one sign bit per unified weight, one scale
per unified block and the kept blocks' values (both in the weight's storage dtype).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from operators.packed import PACKERS, PackSpec, register_kind
from operators.quantization import selected_weights
from operators.stored import StoredLayer
from operators.strategy import CompressedModel, Constraint, Op, add_mask, check_number, register
from operators.unify import (
    KEEP,
    PRUNE,
    UNIFY,
    UnifyState,
    _block_means,
    _signs,
    enforce_unified,
    pack_unified,
    project_unify,
    unpack_unified,
)


class UnifiedBlocks(Constraint):
    """A weight with a fixed unification pattern (:class:`operators.unify.UnifyState`)."""

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


def _check_block(block: Any) -> None:
    if (
        not isinstance(block, (list, tuple))
        or len(block) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)
    ):
        raise ValueError(f"block: must be two integers >= 1 [rows, cols], got {block!r}")


@register
@dataclass(frozen=True, kw_only=True)
class Unify(Op):
    """Unify ``unify_ratio`` and prune ``prune_ratio`` of each selected weight's blocks."""

    name: ClassVar[str] = "unify"
    block: list[int] = field(default_factory=lambda: [1, 4])
    unify_ratio: float
    prune_ratio: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_block(self.block)
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


@register_kind
class UnifiedLayer(StoredLayer):
    """Kind ``unified``: ``states`` (2-bit per block), ``signs`` (1 bit per unified weight),
    ``scales`` (one per unified block) and ``values`` (the kept blocks' weights)."""

    kind: ClassVar[str] = "unified"
    SOURCES: ClassVar[dict[str, str]] = {"scales": "weight", "values": "weight", "bias": "bias"}

    def _init_format(self, block: list[int], unified: int, signs: int, kept: int) -> None:
        _check_block(block)
        self.block = (int(block[0]), int(block[1]))
        self.n_unified, self.n_signs, self.n_kept = unified, signs, kept
        grid = UnifyState(self.weight_shape, self.block, torch.zeros(0), torch.zeros(0)).grid
        n_blocks = grid[0] * grid[1]
        self.register_buffer("states", torch.zeros(-(-2 * n_blocks // 8), dtype=torch.uint8))
        self.register_buffer("signs", torch.zeros(-(-signs // 8), dtype=torch.uint8))
        self.scales = nn.Parameter(torch.zeros(unified))
        self.values = nn.Parameter(torch.zeros(kept))

    def format_config(self) -> dict[str, Any]:
        return {"block": list(self.block), "unified": self.n_unified, "signs": self.n_signs,
                "kept": self.n_kept}  # fmt: skip

    @staticmethod
    def _state(weight: torch.Tensor, spec: PackSpec) -> UnifyState:
        block = tuple(spec.args["block"])
        state = UnifyState(tuple(weight.shape), block, spec.tensors["states"].cpu(), torch.zeros(0))
        means = _block_means(weight.reshape(weight.shape[0], -1).abs().double(), state).float()
        state.scales = torch.where(state.states == UNIFY, means, torch.zeros_like(means))
        return state

    @classmethod
    def format_of(cls, weight: torch.Tensor, spec: PackSpec) -> dict[str, Any]:
        elem = cls._state(weight, spec).element_states()
        return {"block": list(spec.args["block"]), "signs": int((elem == UNIFY).sum()),
                "unified": int((spec.tensors["states"] == UNIFY).sum()),
                "kept": int((elem == KEEP).sum())}  # fmt: skip

    def _load_format(self, weight: torch.Tensor, spec: PackSpec) -> None:
        packed = pack_unified(weight, self._state(weight, spec), scale_dtype=torch.float32)
        for key in ("states", "signs", "scales", "values"):
            getattr(self, key).copy_(packed[key])

    def decode(self) -> torch.Tensor:
        packed = {key: getattr(self, key).detach().cpu() for key in ("states", "signs", "scales")}
        packed["values"] = self.values.detach().cpu().float()
        return unpack_unified(packed, self.weight_shape, self.block)


PACKERS["unify"] = {nn.Linear: UnifiedLayer, nn.Conv2d: UnifiedLayer}
