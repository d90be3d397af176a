"""``block_prune``: zero whole blocks of smallest L2 norm; the checkpoint stores them block-sparse.

A mask over the dense weights, held by masked fine-tuning like ``prune``'s. Weights are
viewed as 2-D, ``(out, in * kernel)`` (:func:`operators.format.codecs.block_view`): for a
Conv layer a block spans rows = filters and columns = input channel x kernel positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from operators.core.model import CompressedModel
from operators.core.op import Op, add_mask, check_choice, check_int, check_number, weight_names
from operators.core.registry import register
from operators.format.codecs import block_view
from operators.ops.prune.magnitude import magnitude_masks


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
    STRENGTH: ClassVar[str | None] = "sparsity"
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
            check_int(f"block[{i}]", v, 1)
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
