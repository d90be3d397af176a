"""``prune``: unstructured magnitude pruning of Linear / Conv weights.

The ``round(sparsity * total)`` smallest-magnitude entries are masked (:func:`magnitude_masks`),
over every selected weight together (``scope: global``) or per weight tensor (``layer``).
The checkpoint stores the kept values as a bitmask or a gap index, whichever is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from operators.core.model import CompressedModel
from operators.core.op import Op, add_mask, check_choice, check_number, weight_names
from operators.core.registry import register


def magnitude_masks(tensors: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep-masks removing the ``round(sparsity * total)`` smallest-magnitude entries overall.

    One threshold over all ``tensors`` together; ties are broken by position (a stable sort of
    the concatenated magnitudes), so the result is deterministic and the count exact.
    """
    magnitudes = torch.cat([t.detach().abs().flatten().float() for t in tensors])
    n_prune = round(sparsity * magnitudes.numel())
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if n_prune:
        order = torch.sort(magnitudes, stable=True).indices
        keep[order[:n_prune]] = False
    return [
        m.view_as(t) for m, t in zip(keep.split([t.numel() for t in tensors]), tensors, strict=True)
    ]


@register
@dataclass(frozen=True, kw_only=True)
class Prune(Op):
    """Unstructured magnitude pruning of Linear / Conv weights (not biases, not norms).

    ``scope="global"``: one threshold over every selected weight; ``"layer"``: each selected
    weight tensor loses the same fraction. Combines with masks from earlier steps (AND).
    """

    name: ClassVar[str] = "prune"
    STRENGTH: ClassVar[str | None] = "sparsity"
    sparsity: float
    scope: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("sparsity", self.sparsity, 0.0, 1.0)
        check_choice("scope", self.scope, ("global", "layer"))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        names = weight_names(self, cm)
        params = dict(cm.model.named_parameters())
        weights = [cm.project(name, params[name]) for name in names]
        if self.scope == "global":
            masks = magnitude_masks(weights, self.sparsity)
        else:
            masks = [magnitude_masks([w], self.sparsity)[0] for w in weights]
        layers = {}
        for name, mask in zip(names, masks, strict=True):
            mask = add_mask(cm, name, mask)
            layers[name] = int((~mask).sum()) / mask.numel()
        total = sum(m.numel() for m in masks)
        pruned = sum(int((~cm.masks[name]).sum()) for name in names)
        return {"sparsity": pruned / total, "layers": layers}
