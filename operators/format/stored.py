"""Packed layers whose weight is stored compactly and decoded once to run, and their codecs.

:class:`StoredLayer` is the base of the ``int8``, ``clustered``, ``unified`` and ``lowrank`` module kinds:
a Linear or Conv2d (``layer`` names its plain kind, ``shape`` its constructor arguments)
whose weight lives in format-specific tensors and is decoded into a cached dense weight for
the forward pass. Its packed and dense forward are the same arithmetic, so the loader's
``runtime="auto"`` measurement keeps whichever runs faster (usually the plain layer).

Format tensors that must keep their exact bit pattern (bit-packed indices, sign bits,
position streams, int8 values) are buffers or integer parameters; float values that follow
the weight's storage dtype (a codebook, unified scales, kept values) are parameters listed in
``SOURCES``.

The positions of a weight's nonzeros are stored with :func:`operators.format.codecs.encode_positions`
(the smallest of a bitmask and gap streams).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.registry import MODULE_KINDS, PackedModule, build_module, kind_of

LAYER_KINDS = ("linear", "conv2d")


# -- the packed layer base --------------------------------------------------------------------


class StoredLayer(PackedModule):
    """A Linear / Conv2d stored in a compact format, run by decoding its weight (cached).

    Subclasses define ``_init_format(**fmt)`` (register the format tensors), ``format_config``,
    ``decode()`` (the dense float32 weight) and ``_load_format(weight, spec)``.
    """

    SOURCES: ClassVar[dict[str, str]] = {"bias": "bias"}

    def __init__(self, layer: str, shape: dict[str, Any], **fmt: Any) -> None:
        super().__init__()
        if layer not in LAYER_KINDS:
            raise ValueError(f"layer: must be one of {', '.join(LAYER_KINDS)}; got {layer!r}")
        self.layer, self.shape = layer, dict(shape)
        template = build_module(layer, self.shape)  # on whatever device is current (meta too)
        self.weight_shape = tuple(template.weight.shape)
        self.bias = None if template.bias is None else nn.Parameter(torch.zeros_like(template.bias))
        self.invalidate()
        self._init_format(**fmt)
        self.register_load_state_dict_post_hook(lambda module, keys: module.invalidate())

    @property
    def numel(self) -> int:
        return math.prod(self.weight_shape)

    def _init_format(self, **fmt: Any) -> None:
        raise NotImplementedError

    def format_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def decode(self) -> torch.Tensor:
        raise NotImplementedError

    def _load_format(self, weight: torch.Tensor, spec: Any) -> None:
        raise NotImplementedError

    @classmethod
    def pack(cls, dense: nn.Module, spec: Any) -> StoredLayer:
        layer = kind_of(dense)
        if layer not in LAYER_KINDS:
            raise ValueError(f"{cls.kind}: cannot pack a {type(dense).__name__}")
        shape = MODULE_KINDS[layer].args(dense)
        if layer == "conv2d" and (shape["padding_mode"] != "zeros" or isinstance(dense.padding, str)):
            raise ValueError(f"{cls.kind}: only zero-padded Conv2d with numeric padding")
        weight = dense.weight.detach().cpu().float()
        bias = None if dense.bias is None else dense.bias.detach().cpu().float()
        module = cls(layer, shape, **cls.format_of(weight, spec), **cls.bias_format(bias, spec))
        with torch.no_grad():
            module._load_format(weight, spec)
            if bias is not None:
                module._load_bias(bias)
        module.invalidate()
        if not torch.equal(module.decode(), weight):
            raise ValueError(
                f"{cls.kind}: the weight does not have the {cls.kind} structure (an op after "
                "it changed the values, e.g. pruning after unify or a cast after int8)"
            )
        return module

    @classmethod
    def format_of(cls, weight: torch.Tensor, spec: Any) -> dict[str, Any]:
        """The format's constructor arguments for ``weight`` (e.g. sizes of its streams)."""
        raise NotImplementedError

    @classmethod
    def bias_format(cls, bias: torch.Tensor | None, spec: Any) -> dict[str, Any]:
        """Constructor arguments for a bias stored in a format of its own ({}: stored as is)."""
        return {}

    def _load_bias(self, bias: torch.Tensor) -> None:
        """Take the dense layer's bias (a format that stores it otherwise overrides this)."""
        self.bias.copy_(bias)

    def config(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": self.shape, **self.format_config()}

    def invalidate(self) -> None:
        """Forget the decoded weight (after the stored tensors changed)."""
        self._cache: torch.Tensor | None = None

    def _apply(self, fn, recurse=True):
        self.invalidate()
        return super()._apply(fn, recurse)

    def dense_weight(self) -> torch.Tensor:
        """The decoded weight, on the module's device (cached)."""
        if self._cache is None:
            device = next(iter(self.state_dict().values())).device
            with torch.inference_mode(False), torch.no_grad():
                self._cache = self.decode().to(device)
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dense_weight().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.layer == "linear":
            return F.linear(x, weight, bias)
        s = self.shape
        return F.conv2d(x, weight, bias, s["stride"], s["padding"], s["dilation"], s["groups"])

    def to_dense(self) -> nn.Module:
        dense = build_module(self.layer, self.shape)
        with torch.no_grad():
            dense.weight.copy_(self.decode())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense.to(self.dense_weight().device)

    def executed_macs(self, output: torch.Tensor) -> int:
        channel_dim = -1 if self.layer == "linear" else 1
        return output.numel() // output.shape[channel_dim] * self.numel
