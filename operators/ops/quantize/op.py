"""``quantize``: lower-precision storage, float16 / bfloat16 or int8.

``float16`` / ``bfloat16``: the selected modules' floating-point parameters are stored in that
dtype (``cm.value_dtypes``), rounded after every fine-tuning step.

``int8``: each selected Linear / Conv2d weight is put on a symmetric per-output-channel int8
grid (:func:`operators.ops.quantize.int8.quantize_per_channel`); the scales are fixed when the
op runs, so fine-tuning keeps the weights on that grid (:class:`Int8Grid`). Stored as kind
``int8`` (:mod:`operators.ops.quantize.packed`): the int8 values (an integer parameter, so a
pruned weight is stored sparse) and float32 scales. Linear layers run on
:class:`~operators.ops.quantize.int8.Int8Linear` (int8 kernel where the device has one),
convolutions on the dequantised weight; the loader keeps the packed form only where it was
measured faster (on CPUs without a fast int8 path int8 is a 4x storage saving, not a speed-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import CompressedModel, Constraint, PackSpec
from operators.core.op import Op, check_choice, param_name, selected_weights
from operators.core.registry import register
from operators.ops.quantize.int8 import INT8_MAX, quantize_per_channel
from operators.ops.quantize.packed import Int8Layer

STORAGE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE_DTYPES = (*STORAGE_DTYPES, "int8")


def _on(tensor: torch.Tensor, cache: dict, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, cached in ``cache`` (constraints run on the weights' device)."""
    key = (id(tensor), str(device))
    if key not in cache:
        cache.clear()
        cache[key] = tensor.to(device)
    return cache[key]


class Int8Grid(Constraint):
    """Weights on ``q * scales`` per output channel, ``q`` an integer in [-127, 127]."""

    def __init__(self, scales: torch.Tensor) -> None:
        self.scales = scales
        self._device_cache: dict = {}

    def project_(self, tensor: torch.Tensor) -> None:
        rows = tensor.view(tensor.shape[0], -1)
        scales = _on(self.scales, self._device_cache, tensor.device)[:, None]
        q = torch.clamp(torch.round(rows / scales), -INT8_MAX, INT8_MAX)
        rows.copy_(q.to(rows.dtype) * scales)


def quantize_int8(op: Op, cm: CompressedModel) -> dict[str, Any]:
    """``quantize`` with ``dtype: int8``: per-channel int8 grids and ``int8`` packing."""
    layers = {}
    for name, module_name, param in selected_weights(op, cm):
        _, scales = quantize_per_channel(cm.project(name, param).cpu())
        cm.constraints[name] = Int8Grid(scales)
        cm.packing[module_name] = PackSpec("int8", {}, {"scales": scales})
        layers[module_name] = float(scales.mean())
    return {"mean_scale": layers}


@register
@dataclass(frozen=True, kw_only=True)
class Quantize(Op):
    """Store the selected modules' floating-point parameters in a lower-precision dtype.

    ``int8``: Linear / Conv weights as int8 with one scale per output channel
    (:class:`Int8Grid`, stored as kind ``int8``); other parameters stay float32.
    """

    name: ClassVar[str] = "quantize"
    PACKERS: ClassVar[dict] = {"int8": {nn.Linear: Int8Layer, nn.Conv2d: Int8Layer}}
    dtype: str = "float16"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dtype", self.dtype, QUANTIZE_DTYPES)

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        if self.dtype == "int8":
            return quantize_int8(self, cm)
        dtype = STORAGE_DTYPES[self.dtype]
        names = [
            param_name(module_name, local)
            for module_name, module in self.selected_modules(cm.model)
            for local, param in module.named_parameters(recurse=False)
            if param.is_floating_point()
        ]
        if not names:
            raise ValueError("quantize: include/exclude selected no floating-point parameter")
        for name in names:
            cm.value_dtypes[name] = dtype
        return {"tensors": len(names)}
