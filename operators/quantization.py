"""The ``quantize`` op's int8 form and the ``cluster`` op, with their packed module kinds.

``quantize`` with ``dtype: int8`` (see :class:`operators.strategy.Quantize`): each selected
Linear / Conv2d weight is put on a symmetric per-output-channel int8 grid
(:func:`operators.int8.quantize_per_channel`); the scales are fixed when the op runs, so
fine-tuning keeps the weights on that grid (:class:`Int8Grid`). Stored as kind ``int8``: the
int8 values (an integer parameter, so a pruned weight is stored sparse) and float32 scales.
Linear layers run on :class:`operators.int8.Int8Linear` (int8 kernel where the device has
one), convolutions on the dequantised weight; the loader keeps the packed form only where it
was measured faster (on CPUs without a fast int8 path int8 is a 4x storage saving, not a
speed-up).

``cluster`` (``bits``, ``method`` ``dp``/``kmeans``): each selected weight takes at most
``2**bits`` distinct values (DP-Net's exact 1-D k-means, :mod:`operators.cluster`). After a
pruning op only the kept entries are clustered and the zeros stay out of the codebook.
Fine-tuning holds the assignment and trains the centroids (:class:`Codebook`: a centroid's
gradient is the sum of its members'). Stored as kind ``clustered``: the codebook (in the
weight's storage dtype, so ``cluster`` then ``quantize float16`` gives an fp16 codebook),
``bits``-bit packed indices of the nonzeros, and their positions in the most compact of a
bitmask and relative indices (:mod:`operators.stored`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from operators.cluster import CLUSTER_METHODS, cluster_tensor, pack_indices, unpack_indices
from operators.int8 import INT8_MAX, Int8Linear, dequantize_per_channel, quantize_per_channel
from operators.packed import PACKERS, PackSpec, register_kind
from operators.stored import StoredLayer, decode_positions, encode_positions, position_bytes
from operators.strategy import (
    CompressedModel,
    Constraint,
    Op,
    check_choice,
    register,
    weight_names,
)

PACKABLE = (nn.Linear, nn.Conv2d)


def _on(tensor: torch.Tensor, cache: dict, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, cached in ``cache`` (constraints run on the weights' device)."""
    key = (id(tensor), str(device))
    if key not in cache:
        cache.clear()
        cache[key] = tensor.to(device)
    return cache[key]


def claim(cm: CompressedModel, op: Op, name: str) -> str:
    """The module of weight ``name``, after checking no other op packed or constrained it."""
    module_name = name.rsplit(".", 1)[0]
    if module_name in cm.packing:
        raise ValueError(
            f"{op.name}: {module_name} is already packed as {cm.packing[module_name].kind}"
        )
    if name in cm.constraints:
        raise ValueError(f"{op.name}: {name} already carries {type(cm.constraints[name]).__name__}")
    return module_name


def selected_weights(op: Op, cm: CompressedModel) -> list[tuple[str, str, nn.Parameter]]:
    """``(weight name, module name, parameter)`` of every selected Linear / Conv2d, claimed."""
    params = dict(cm.model.named_parameters())
    return [
        (name, claim(cm, op, name), params[name])
        for name in weight_names(op, cm, PACKABLE, "Linear or Conv2d")
    ]


# -- int8 -------------------------------------------------------------------------------------


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


# -- cluster ----------------------------------------------------------------------------------


class Codebook(Constraint):
    """A weight whose entries at ``positions`` take ``k`` shared values, by a fixed assignment.

    Projection: every cluster's members to their mean (the Euclidean projection onto this
    fixed assignment); gradient: each member gets the sum of its cluster's gradients (the
    centroid's gradient), so members stay tied under any optimizer.
    """

    def __init__(self, assignment: torch.Tensor, positions: torch.Tensor | None, k: int) -> None:
        self.assignment = assignment.long()
        self.positions = positions  # flat indices of the clustered entries (None: all)
        self.k = k
        self._device_cache: dict = {}
        self._counts: torch.Tensor | None = None

    def _index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = str(device)
        if key not in self._device_cache:
            pos = None if self.positions is None else self.positions.to(device)
            self._device_cache[key] = (self.assignment.to(device), pos)
        return self._device_cache[key]

    def _sums(self, flat: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        idx, pos = self._index(flat.device)
        values = flat if pos is None else flat[pos]
        return torch.bincount(idx, weights=values.to(dtype), minlength=self.k).to(dtype), idx

    def _scatter(self, flat: torch.Tensor, per_cluster: torch.Tensor, idx: torch.Tensor) -> None:
        pos = self._index(flat.device)[1]
        if pos is None:
            flat.copy_(per_cluster[idx])
        else:
            flat[pos] = per_cluster[idx]

    def project_(self, tensor: torch.Tensor) -> None:
        flat = tensor.view(-1)
        sums, idx = self._sums(flat, torch.float64)
        if self._counts is None or self._counts.device != flat.device:
            self._counts = torch.bincount(idx, minlength=self.k).clamp_min(1)
        counts = self._counts
        self._scatter(flat, (sums / counts).to(flat.dtype), idx)

    def grad(self, grad: torch.Tensor) -> torch.Tensor:
        flat = grad.reshape(-1)
        sums, idx = self._sums(flat, flat.dtype)
        out = torch.zeros_like(flat)
        self._scatter(out, sums, idx)
        return out.view_as(grad)


@register
@dataclass(frozen=True, kw_only=True)
class Cluster(Op):
    """Cluster each selected weight to at most ``2**bits`` values (``dp`` exact, ``kmeans``)."""

    name: ClassVar[str] = "cluster"
    bits: int
    method: str = "dp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ValueError(f"bits: must be an integer in [1, 8], got {self.bits!r}")
        check_choice("method", self.method, CLUSTER_METHODS)

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        layers = {}
        for name, module_name, param in selected_weights(self, cm):
            weight = cm.project(name, param).cpu()
            mask = cm.masks.get(name)
            mask = None if mask is None else mask.cpu()
            codebook, indices = cluster_tensor(weight, self.bits, self.method, mask)
            positions = None if mask is None else torch.nonzero(mask.reshape(-1)).flatten()
            cm.constraints[name] = Codebook(indices, positions, max(1, len(codebook)))
            cm.packing[module_name] = PackSpec("cluster", {"bits": self.bits})
            layers[module_name] = {"values": len(codebook), "clustered": int(indices.numel())}
        return {"layers": layers}


@register_kind
class ClusteredLayer(StoredLayer):
    """Kind ``clustered``: ``codebook`` (k values), ``indices`` (``bits``-bit, one per
    nonzero, packed) and ``positions`` (the nonzeros' positions, see :mod:`operators.stored`).
    """

    kind: ClassVar[str] = "clustered"
    SOURCES: ClassVar[dict[str, str]] = {"codebook": "weight", "bias": "bias"}

    def _init_format(
        self, bits: int, k: int, nnz: int, positions: str = "all", symbols: int = 0
    ) -> None:
        if not (1 <= bits <= 8 and 0 <= k <= 2**bits and 0 <= nnz <= self.numel):
            raise ValueError(f"bad clustered format: bits={bits}, k={k}, nnz={nnz}")
        self.bits, self.k, self.nnz = bits, k, nnz
        self.encoding, self.symbols = positions, symbols
        self.codebook = nn.Parameter(torch.zeros(k))
        n_index = -(-nnz * bits // 8)
        self.register_buffer("indices", torch.zeros(n_index, dtype=torch.uint8))
        n_pos = position_bytes(positions, symbols, self.numel)
        self.register_buffer("positions", torch.zeros(n_pos, dtype=torch.uint8))

    def format_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "k": self.k, "nnz": self.nnz, "positions": self.encoding,
                "symbols": self.symbols}  # fmt: skip

    @classmethod
    def format_of(cls, weight: torch.Tensor, spec: PackSpec) -> dict[str, Any]:
        nonzero = weight.reshape(-1) != 0
        encoding, symbols, _ = encode_positions(nonzero)
        k = len(torch.unique(weight.reshape(-1)[nonzero]))
        bits = spec.args["bits"]
        if k > 2**bits:
            raise ValueError(f"clustered: {k} distinct values do not fit {bits}-bit indices")
        return {"bits": bits, "k": k, "nnz": int(nonzero.sum()), "positions": encoding,
                "symbols": symbols}  # fmt: skip

    def _load_format(self, weight: torch.Tensor, spec: PackSpec) -> None:
        flat = weight.reshape(-1)
        nonzero = flat != 0
        self.positions.copy_(encode_positions(nonzero)[2])
        codebook, inverse = torch.unique(flat[nonzero], return_inverse=True)
        self.codebook.copy_(codebook)
        self.indices.copy_(pack_indices(inverse, self.bits))

    def decode(self) -> torch.Tensor:
        nonzero = decode_positions(self.encoding, self.symbols, self.positions.cpu(), self.numel)
        if int(nonzero.sum()) != self.nnz:
            raise ValueError("clustered: positions and nnz disagree")
        indices = unpack_indices(self.indices.cpu(), self.bits, self.nnz)
        if self.nnz and int(indices.max()) >= self.k:
            raise ValueError("clustered: an index points outside the codebook")
        flat = torch.zeros(self.numel)
        flat[nonzero] = self.codebook.detach().cpu().float()[indices]
        return flat.view(self.weight_shape)


PACKERS["int8"] = {nn.Linear: Int8Layer, nn.Conv2d: Int8Layer}
PACKERS["cluster"] = {nn.Linear: ClusteredLayer, nn.Conv2d: ClusteredLayer}
__all__ = ["Cluster", "ClusteredLayer", "Codebook", "Int8Grid", "Int8Layer", "quantize_int8"]
