"""The deployable form of a packed model: plain layers, and int8 layers as dequantise-then-compute.

:func:`deployable` turns a model loaded from a packed checkpoint into one whose every layer
exports cleanly: a packed layer (MPD, clustered, unified, CSR, ...) becomes the plain Linear /
Conv2d it computes (float32 weights; float16 / bfloat16 storage is widened to float32), a
:class:`~operators.runtime.select.BatchDispatch` its dense form, and an ``int8`` layer an
:class:`Int8Dequant`, which keeps the int8 values and per-channel scales and dequantises them
in the graph (an ONNX ``DequantizeLinear`` with ``axis=0`` feeding the Gemm / Conv). Layers
that structural pruning removed stay removed (the layers are built at their smaller shapes)
and a ``lowrank`` layer stays its two factors.

:func:`load_deployable` does this for a checkpoint file: it loads the model with
``runtime="dense"`` and puts back the int8 layers of the ``runtime="packed"`` load (so the
int8 values are the stored ones, bit for bit).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.registry import PackedModule
from operators.format.checkpoint import load_checkpoint
from operators.ops.quantize.int8 import INT8_MAX
from operators.ops.quantize.packed import Int8Layer
from operators.runtime.select import BatchDispatch


class Int8Dequant(nn.Module):
    """A Linear / Conv2d on int8 weights with one float32 scale per output channel.

    ``qdq=True`` dequantises with ``quantized_decomposed.dequantize_per_channel`` (what the
    ONNX exporter writes as ``DequantizeLinear``); ``qdq=False`` with plain ``q * s`` (a
    ``.pt2`` that loads anywhere, without that op library).
    """

    def __init__(self, layer: Int8Layer, qdq: bool = True) -> None:
        super().__init__()
        # registers torch.ops.quantized_decomposed; it must be there before torch.onnx.export
        # starts, or the exporter finds no ONNX function for it
        import torch.ao.quantization.fx._decomposed  # noqa: F401

        self.layer, self.shape, self.qdq = layer.layer, dict(layer.shape), qdq
        self.register_buffer("qweight", layer.qweight.detach().clone())
        self.register_buffer("scales", layer.scales.detach().float().clone())
        self.register_buffer("zero_points", torch.zeros(len(layer.scales), dtype=torch.int64))
        bias = None if layer.bias is None else layer.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        """The float32 weight ``q * s`` (per output channel)."""
        if self.qdq:
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.qweight, self.scales, self.zero_points, 0, -INT8_MAX, INT8_MAX, torch.int8
            )
        view = (-1,) + (1,) * (self.qweight.dim() - 1)
        return self.qweight.float() * self.scales.view(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight()
        if self.layer == "linear":
            return F.linear(x, weight, self.bias)
        s = self.shape
        return F.conv2d(x, weight, self.bias, s["stride"], s["padding"], s["dilation"], s["groups"])


def deployable(model: nn.Module, *, qdq: bool = True) -> nn.Module:
    """A copy of ``model`` (eval mode, CPU) in the form described in the module docstring.

    A model whose MPD permutations were folded across layers (a ``runtime="packed"`` or
    ``"auto"`` load) cannot be split back into plain layers: load it with ``runtime="dense"``
    or use :func:`load_deployable`.
    """
    model = copy.deepcopy(model).cpu().eval()
    for name, module in list(model.named_modules()):
        if not name:
            continue
        try:
            if model.get_submodule(name) is not module:
                continue  # inside a module already replaced
        except AttributeError:
            continue
        if isinstance(module, BatchDispatch):
            module = module.packed
        if isinstance(module, Int8Layer):
            model.set_submodule(name, Int8Dequant(module, qdq=qdq))
        elif isinstance(module, Int8Dequant):
            module.qdq = qdq
        elif isinstance(module, PackedModule):
            if getattr(module, "skip_output_gather", False):
                raise ValueError(
                    f"layer {name!r}: its permutations are folded into the next layer; "
                    "load the checkpoint with runtime='dense' (or use load_deployable)"
                )
            model.set_submodule(name, module.to_dense().cpu().eval())
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            tensor.data = tensor.data.float()
    return model


def load_deployable(path: Path, *, qdq: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The deployable model of a packed checkpoint file and the checkpoint's manifest."""
    dense, manifest = load_checkpoint(Path(path), runtime="dense")
    if any(record["kind"] == Int8Layer.kind for record in manifest["modules"].values()):
        packed, _ = load_checkpoint(Path(path), runtime="packed")
        for name, module in packed.named_modules():
            if isinstance(module, Int8Layer):
                dense.set_submodule(name, module)
    return deployable(dense, qdq=qdq), manifest
