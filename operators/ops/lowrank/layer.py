"""The ``lowrank`` module kind: a Linear or Conv2d run as two smaller layers.

``LowRankLayer(layer, shape, rank)``: ``layer`` names the plain kind it replaces (``linear``
or ``conv2d``) and ``shape`` that layer's constructor arguments. A Linear ``(out, in)`` becomes
``second(first(x))`` with ``first`` Linear ``in -> rank`` (no bias) and ``second`` Linear
``rank -> out`` (the original bias); a Conv2d ``(out, in, kh, kw)``, viewed as the matrix
``(out, in*kh*kw)``, becomes ``first`` Conv2d ``in -> rank`` with the original kernel, stride,
padding and dilation (no bias) and ``second`` a 1x1 Conv2d ``rank -> out`` (the original bias).

The two factors are ordinary layers, so they train under any fine-tuning method and every
later op (prune, cluster, quantize) compresses them like any other Linear / Conv2d; the
checkpoint stores them under ``<name>.first`` and ``<name>.second`` and records the module
as ``{"kind": "lowrank", "args": {"layer", "shape", "rank"}}``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.registry import MODULE_KINDS, build_module, plain_layer_type, register_kind

LAYERS = ("linear", "conv2d")


@register_kind
class LowRankLayer(nn.Module):
    """A Linear / Conv2d factored into ``first`` (to ``rank`` channels) and ``second``."""

    kind: ClassVar[str] = "lowrank"

    def __init__(self, layer: str, shape: dict[str, Any], rank: int) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"layer: must be one of {', '.join(LAYERS)}; got {layer!r}")
        self.layer, self.shape, self.rank = layer, dict(shape), int(rank)
        s = self.shape
        if layer == "linear":
            limit = min(s["in_features"], s["out_features"])
            first = {"in_features": s["in_features"], "out_features": rank, "bias": False}
            second = {"in_features": rank, "out_features": s["out_features"], "bias": s["bias"]}
        else:
            if s.get("groups", 1) != 1:
                raise ValueError("lowrank: only Conv2d with groups=1")
            limit = min(s["out_channels"], s["in_channels"] * math.prod(s["kernel_size"]))
            first = {**s, "out_channels": rank, "bias": False}
            second = {**s, "in_channels": rank, "kernel_size": [1, 1], "stride": [1, 1],
                      "padding": [0, 0], "dilation": [1, 1]}  # fmt: skip
        if not 1 <= rank <= limit:
            raise ValueError(f"rank: must be in [1, {limit}], got {rank}")
        self.first = build_module(layer, first)
        self.second = build_module(layer, second)

    def config(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": self.shape, "rank": self.rank}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @staticmethod
    def args_of(dense: nn.Module) -> tuple[str, dict[str, Any]]:
        """``(layer kind, constructor arguments)`` of a plain Linear / Conv2d."""
        layer = "linear" if plain_layer_type(dense) is nn.Linear else "conv2d"
        return layer, MODULE_KINDS[layer].args(dense)

    def product(self) -> torch.Tensor:
        """``second @ first`` as the weight of the replaced layer (its original shape)."""
        first, second = _weight(self.first), _weight(self.second)
        matrix = second.reshape(second.shape[0], -1) @ first.reshape(first.shape[0], -1)
        if self.layer == "linear":
            return matrix
        s = self.shape
        return matrix.reshape(s["out_channels"], s["in_channels"], *s["kernel_size"])


def _weight(module: nn.Module) -> torch.Tensor:
    """A factor's weight, decoded if a later op packed it."""
    dense = module.to_dense() if hasattr(module, "to_dense") else module
    return dense.weight.detach()
