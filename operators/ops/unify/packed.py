"""The packed kind of ``unify``: ``unified``, 2-bit block states, sign bits, scales and kept blocks."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import PackSpec
from operators.core.registry import register_kind
from operators.format.stored import StoredLayer
from operators.ops.unify.algorithm import (
    KEEP,
    UNIFY,
    UnifyState,
    _block_means,
    check_block,
    pack_unified,
    unpack_unified,
)


@register_kind
class UnifiedLayer(StoredLayer):
    """Kind ``unified``: ``states`` (2-bit per block), ``signs`` (1 bit per unified weight),
    ``scales`` (one per unified block) and ``values`` (the kept blocks' weights)."""

    kind: ClassVar[str] = "unified"
    SOURCES: ClassVar[dict[str, str]] = {"scales": "weight", "values": "weight", "bias": "bias"}

    def _init_format(self, block: list[int], unified: int, signs: int, kept: int) -> None:
        check_block(block)
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
