"""The packed kind of ``quantize int8``: ``int8``, int8 values and one float32 scale per output channel."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import PackSpec
from operators.core.registry import register_kind
from operators.format.stored import StoredLayer
from operators.ops.quantize.int8 import INT8_MAX, Int8Linear, dequantize_per_channel


@register_kind
class Int8Layer(StoredLayer):
    """Kind ``int8``: ``qweight`` (int8) and ``scales`` (float32, one per output channel)."""

    kind: ClassVar[str] = "int8"

    def _init_format(self) -> None:
        self.qweight = nn.Parameter(
            torch.zeros(self.weight_shape, dtype=torch.int8), requires_grad=False
        )
        self.register_buffer("scales", torch.ones(self.weight_shape[0]))

    def format_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def format_of(cls, weight: torch.Tensor, spec: PackSpec) -> dict[str, Any]:
        return {}

    def _load_format(self, weight: torch.Tensor, spec: PackSpec) -> None:
        scales = spec.tensors["scales"].float().cpu()
        rows = weight.reshape(weight.shape[0], -1) / scales[:, None]
        q = torch.clamp(torch.round(rows), -INT8_MAX, INT8_MAX).to(torch.int8)
        self.qweight.copy_(q.view(self.weight_shape))
        self.scales.copy_(scales)

    def decode(self) -> torch.Tensor:
        return dequantize_per_channel(self.qweight.cpu(), self.scales.cpu())

    def invalidate(self) -> None:
        super().invalidate()
        self._linear: dict[str, Int8Linear] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer != "linear":
            return super().forward(x)
        if not self._linear:  # an Int8Linear sharing the stored tensors
            self._linear["module"] = Int8Linear(self.qweight.data, self.scales, self.bias)
        return self._linear["module"](x)
