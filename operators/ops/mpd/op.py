"""The ``mpd`` op: MPDCompress (Supic et al. 2018), permuted block-diagonal weight masks.

Each selected Linear (and groups=1 Conv2d, on its out x in channel matrix) gets random row and
column permutations ``p``, ``q`` and the mask ``M[p[i], q[j]] = D[i, j]``, ``D`` a k-block
block diagonal (near-equal blocks when k does not divide a side). Masked fine-tuning holds the
mask; the checkpoint stores the layer as k dense blocks plus ``p`` and ``q``
(:class:`operators.ops.mpd.packed.MPDLinear` / :class:`~operators.ops.mpd.packed.MPDConv2d`), run as gather,
k small products, gather. Layers with fewer than k rows or columns are left alone
(``skipped``), and so is the model's output layer (the last Linear/Conv, which produces the
logits: masked, each class would see only 1/k of the features) unless ``include`` is given
and matches its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import CompressedModel, PackSpec
from operators.core.op import Op, add_mask, output_layer
from operators.core.registry import register
from operators.ops.mpd.packed import MPDConv2d, MPDLinear, mpd_mask


@register
@dataclass(frozen=True, kw_only=True)
class MPD(Op):
    """Permuted block-diagonal masks with ``blocks`` = k blocks per layer, drawn from ``seed``.

    The output layer stays dense unless ``include`` names it (see the module docstring).
    """

    name: ClassVar[str] = "mpd"
    PACKERS: ClassVar[dict] = {"mpd": {nn.Linear: MPDLinear, nn.Conv2d: MPDConv2d}}
    blocks: int
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("blocks", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (key == "blocks") * 2:
                low = 2 if key == "blocks" else 0
                raise ValueError(f"{key}: must be an integer >= {low}, got {value!r}")

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed)
        layers, skipped = {}, []
        last = output_layer(cm.model)
        for module_name, module in self.selected_modules(cm.model, (nn.Linear, nn.Conv2d)):
            rows, cols = module.weight.shape[:2]
            named = self.include is not None and re.search(self.include, module_name)
            if (
                getattr(module, "groups", 1) != 1
                or min(rows, cols) < self.blocks
                or (module is last and not named)
            ):
                skipped.append(module_name)
                continue
            if module_name in cm.packing:
                raise ValueError(f"mpd: {module_name} is already packed as {cm.packing[module_name].kind}")
            p = torch.randperm(rows, generator=generator).to(torch.int32)
            q = torch.randperm(cols, generator=generator).to(torch.int32)
            mask = mpd_mask(rows, cols, self.blocks, p, q).to(module.weight.device)
            mask = mask.view(rows, cols, *[1] * (module.weight.dim() - 2)).expand_as(module.weight)
            mask = add_mask(cm, f"{module_name}.weight", mask.contiguous())
            cm.packing[module_name] = PackSpec(
                "mpd", {"blocks": self.blocks}, {"row_perm": p, "col_perm": q}
            )
            layers[module_name] = float(mask.float().mean())
        if not layers:
            raise ValueError(f"mpd: no selected Linear/Conv2d layer has at least {self.blocks} rows and columns")
        return {"density": layers, "skipped": skipped}
