"""The ``cluster`` op. ``cluster`` (``bits``, ``method`` ``dp``/``kmeans``, ``bias_bits``): each selected weight takes at most
``2**bits`` distinct values (with ``bias_bits``, its layer's bias at most ``2**bias_bits``) (DP-Net's exact 1-D k-means, :mod:`operators.ops.cluster.algorithm`). After a
pruning op only the kept entries are clustered and the zeros stay out of the codebook.
Fine-tuning holds the assignment and trains the centroids (:class:`Codebook`: a centroid's
gradient is the sum of its members'). Stored as kind ``clustered``: the codebook (in the
weight's storage dtype, so ``cluster`` then ``quantize float16`` gives an fp16 codebook),
``bits``-bit packed indices of the nonzeros, and their positions in the most compact of a
bitmask and relative indices (:mod:`operators.format.codecs`), in :mod:`operators.ops.cluster.packed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import CompressedModel, Constraint, PackSpec
from operators.core.op import Op, check_choice, selected_weights
from operators.core.registry import register
from operators.format.codecs import check_bits
from operators.ops.cluster.algorithm import CLUSTER_METHODS, cluster_tensor
from operators.ops.cluster.packed import ClusteredLayer
from operators.ops.cluster.sensitivity import allocate_bits, bit_curves


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
    """Cluster each selected weight to at most ``2**bits`` values (``dp`` exact, ``kmeans``).

    ``allocate="sensitivity"``: per-layer widths from a pre-pass on the calibration inputs
    (:mod:`operators.ops.cluster.sensitivity`), ``bits`` then being the most the mean width
    (per clustered value) may be; each layer's width is in its report entry.
    """

    name: ClassVar[str] = "cluster"
    PACKERS: ClassVar[dict] = {"cluster": {nn.Linear: ClusteredLayer, nn.Conv2d: ClusteredLayer}}
    bits: int
    method: str = "dp"
    allocate: str = "uniform"
    bias_bits: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits)
        check_choice("method", self.method, CLUSTER_METHODS)
        check_choice("allocate", self.allocate, ("uniform", "sensitivity"))
        if self.bias_bits is not None:
            check_bits(self.bias_bits)

    def params(self) -> dict[str, Any]:
        """The parameters for reports; ``allocate`` and ``bias_bits`` only when not the
        defaults."""
        out = super().params()
        if self.allocate == "uniform":
            del out["allocate"]
        if self.bias_bits is None:
            del out["bias_bits"]
        return out

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        selected = []
        for name, module_name, param in selected_weights(self, cm):
            mask = cm.masks.get(name)
            selected.append((name, module_name, cm.project(name, param).cpu(),
                             None if mask is None else mask.cpu()))  # fmt: skip
        widths = {name: self.bits for name, *_ in selected}
        if self.allocate == "sensitivity":
            curves = bit_curves(cm, [(n, w, m) for n, _, w, m in selected], self.bits, self.method)
            sizes = {n: int(w.numel() if m is None else m.sum()) for n, _, w, m in selected}
            widths = allocate_bits(curves, sizes, self.bits)
        layers = {}
        for name, module_name, weight, mask in selected:
            bits = widths[name]
            codebook, indices = cluster_tensor(weight, bits, self.method, mask)
            positions = None if mask is None else torch.nonzero(mask.reshape(-1)).flatten()
            cm.constraints[name] = Codebook(indices, positions, max(1, len(codebook)))
            args = {"bits": bits}
            layers[module_name] = {"values": len(codebook), "clustered": int(indices.numel())}
            bias = cm.model.get_submodule(module_name).bias
            if self.bias_bits is not None and bias is not None:
                values, assignment = cluster_tensor(bias.detach().cpu(), self.bias_bits, self.method)
                bias_name = f"{module_name}.bias" if module_name else "bias"
                cm.constraints[bias_name] = Codebook(assignment, None, max(1, len(values)))
                args["bias_bits"] = self.bias_bits
                layers[module_name]["bias_values"] = len(values)
            cm.packing[module_name] = PackSpec("cluster", args)
            if self.allocate == "sensitivity":
                layers[module_name]["bits"] = bits
        return {"layers": layers}
