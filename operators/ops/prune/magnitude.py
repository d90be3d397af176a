"""``prune``: unstructured magnitude pruning of Linear / Conv weights.

The ``round(sparsity * total)`` smallest-magnitude entries are masked (:func:`magnitude_masks`),
over every selected weight together (``scope: global``) or per weight tensor (``layer``).
With ``allocate: sensitivity`` the same total is split into per-layer sparsities by a
sensitivity pre-pass on calibration inputs (:mod:`operators.ops.prune.sensitivity`), each layer
then pruned by magnitude to its own count; the report lists the sparsity each layer got.
The checkpoint stores the kept values as a bitmask or a gap index, whichever is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from operators.core.model import CompressedModel
from operators.core.op import Op, add_mask, check_choice, check_number, weight_names
from operators.core.registry import register
from operators.ops.prune.sensitivity import allocate_counts, count_masks, sparsity_curves

ALLOCATIONS = ("uniform", "sensitivity")


def magnitude_masks(tensors: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep-masks removing the ``round(sparsity * total)`` smallest-magnitude entries overall.

    One threshold over all ``tensors`` together; ties are broken by position (a stable sort of
    the concatenated magnitudes), so the result is deterministic and the count exact.
    """
    return count_masks(tensors, round(sparsity * sum(t.numel() for t in tensors)))


@register
@dataclass(frozen=True, kw_only=True)
class Prune(Op):
    """Unstructured magnitude pruning of Linear / Conv weights (not biases, not norms).

    ``scope="global"``: one threshold over every selected weight; ``"layer"``: each selected
    weight tensor loses the same fraction. ``allocate="sensitivity"`` (global scope only):
    per-layer counts from the sensitivity pre-pass, the same total. Combines with masks from
    earlier steps (AND).
    """

    name: ClassVar[str] = "prune"
    STRENGTH: ClassVar[str | None] = "sparsity"
    sparsity: float
    scope: str = "global"
    allocate: str = "uniform"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("sparsity", self.sparsity, 0.0, 1.0)
        check_choice("scope", self.scope, ("global", "layer"))
        check_choice("allocate", self.allocate, ALLOCATIONS)
        if self.allocate == "sensitivity" and self.scope != "global":
            raise ValueError("allocate: sensitivity sets per-layer sparsities itself; "
                             "use it with scope global")  # fmt: skip

    def params(self) -> dict[str, Any]:
        """The parameters for reports; ``allocate`` only when not the default, so a uniform
        pruning reports exactly what it did before the option existed."""
        out = super().params()
        if self.allocate == "uniform":
            del out["allocate"]
        return out

    def _weights(self, cm: CompressedModel) -> tuple[list[str], list[torch.Tensor]]:
        """The selected weights' names and their values as the model computes with them."""
        names = weight_names(self, cm)
        params = dict(cm.model.named_parameters())
        return names, [cm.project(name, params[name]) for name in names]

    def start_strength(self, cm: CompressedModel) -> float:
        """The share of the selected weights that are already zero (masked or exactly 0.0,
        as in a warm start's parent or a user's pruned model): a schedule ramps on from it."""
        with torch.no_grad():
            _, weights = self._weights(cm)
        return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        names, weights = self._weights(cm)
        details: dict[str, Any] = {}
        if self.allocate == "sensitivity":
            floors = {n: int((~cm.masks[n]).sum()) if n in cm.masks else 0 for n in names}
            budget = round(self.sparsity * sum(w.numel() for w in weights))
            curves = sparsity_curves(cm, names, weights)
            counts = allocate_counts(curves, floors, budget)
            masks = [count_masks([w], counts[n])[0] for n, w in zip(names, weights, strict=True)]
            details["allocate"] = "sensitivity"
        elif self.scope == "global":
            masks = magnitude_masks(weights, self.sparsity)
        else:
            masks = [magnitude_masks([w], self.sparsity)[0] for w in weights]
        layers = {}
        for name, mask in zip(names, masks, strict=True):
            mask = add_mask(cm, name, mask)
            layers[name] = int((~mask).sum()) / mask.numel()
        total = sum(m.numel() for m in masks)
        pruned = sum(int((~cm.masks[name]).sum()) for name in names)
        return {"sparsity": pruned / total, "layers": layers, **details}
