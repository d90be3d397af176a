"""The ``lowrank`` op: a Linear or Conv2d weight replaced by two factors of a truncated SVD.

Each selected layer's weight ``W`` (conv viewed as ``(out, in*kh*kw)``) becomes the product
of ``A = U_r sqrt(S_r)`` and ``B = sqrt(S_r) V_r^T``, the best rank-``r`` approximation
(:mod:`operators.ops.lowrank.algorithm`), with ``r`` given as ``rank`` or chosen as the
smallest rank that keeps ``energy`` of the squared singular values. The layer is replaced by a
:class:`~operators.ops.lowrank.layer.LowRankLayer` (two small layers: the factors train under
fine-tuning, and later ops compress them). A layer the factors would not make smaller
(``r * (m + n) >= m * n``) or cannot factor (grouped convs) is left alone and listed under
``skipped``; so is the network's output layer unless ``include`` names it (as for ``mpd``).
It must come before ops that mask, pack or change the storage of the same layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from operators.core.model import CompressedModel
from operators.core.op import Op, check_int, check_number, output_layer, param_name
from operators.core.registry import plain_layer_type, register
from operators.ops.lowrank.algorithm import low_rank_factors, rank_for_energy, singular_values
from operators.ops.lowrank.layer import LowRankLayer


@register
@dataclass(frozen=True, kw_only=True)
class LowRank(Op):
    """Factor each selected layer to ``rank`` (an int), or to keep ``energy`` (0..1]."""

    name: ClassVar[str] = "lowrank"
    STRUCTURAL: ClassVar[bool] = True  # replaces modules: L-C's projection must not re-run it
    rank: int | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.rank is None) == (self.energy is None):
            raise ValueError("rank: give exactly one of rank (an integer) and energy (0..1]")
        if self.rank is not None:
            check_int("rank", self.rank, 1)
        else:
            check_number("energy", self.energy, 0.0, 1.0, high_inclusive=True)
            if self.energy == 0.0:
                raise ValueError("energy: must be in (0, 1], got 0")

    def _check_untouched(self, cm: CompressedModel, module_name: str) -> None:
        for param in ("weight", "bias"):
            name = param_name(module_name, param)
            if name in cm.masks or name in cm.value_dtypes or name in cm.constraints:
                raise ValueError(
                    f"lowrank: {name} is already compressed by an earlier op; put lowrank first"
                )
        if module_name in cm.packing:
            raise ValueError(f"lowrank: {module_name} is already packed; put lowrank first")

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        last = output_layer(cm.model)
        explicit = self.include is not None
        layers, skipped = {}, {}
        selected = self.selected_modules(cm.model, (nn.Linear, nn.Conv2d))
        if not selected:
            raise ValueError("lowrank: include/exclude selected no Linear or Conv2d layer")
        for module_name, module in selected:
            if plain_layer_type(module) not in (nn.Linear, nn.Conv2d):  # a subclass may compute more
                skipped[module_name] = f"{type(module).__name__}: not a plain Linear or Conv2d"
                continue
            if module is last and not (explicit and re.search(self.include, module_name)):
                skipped[module_name] = "output layer"
                continue
            if isinstance(module, nn.Conv2d) and (
                module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
            ):
                skipped[module_name] = "grouped, non-zero-padded or string-padded conv"
                continue
            self._check_untouched(cm, module_name)
            weight = module.weight.detach()
            matrix = weight.reshape(weight.shape[0], -1)
            m, n = matrix.shape
            sigma = singular_values(matrix)
            rank = self.rank if self.rank is not None else rank_for_energy(sigma, self.energy)
            rank = min(rank, m, n)
            if rank * (m + n) >= m * n:
                skipped[module_name] = f"rank {rank} would not make it smaller"
                continue
            a, b = low_rank_factors(matrix, rank)
            layer, shape = LowRankLayer.args_of(module)
            factored = LowRankLayer(layer, shape, rank).to(weight.device)
            factored.first.weight.data.copy_(b.reshape(factored.first.weight.shape))
            factored.second.weight.data.copy_(a.reshape(factored.second.weight.shape))
            if module.bias is not None:
                factored.second.bias.data.copy_(module.bias.detach())
            cm.model.set_submodule(module_name, factored)
            kept = float(sigma[:rank].pow(2).sum() / sigma.pow(2).sum().clamp_min(1e-300))
            layers[module_name] = {"rank": rank, "energy": kept}
        if layers:
            cm.structural = True
        return {"layers": layers, "skipped": skipped}
