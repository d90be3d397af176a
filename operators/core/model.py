"""The state a compression leaves on a model: :class:`CompressedModel`, its constraints and
packing decisions.

A step of a strategy (an op) compresses a :class:`CompressedModel` in place; what it leaves
behind is what fine-tuning must hold and the checkpoint must store:

- ``masks``: parameter name -> bool tensor, True where the weight is kept;
- ``value_dtypes``: parameter name -> the dtype its values are stored in (float32 if absent);
- ``blocks``: parameter name -> ``(rows, cols)`` of the blocks it was pruned in (the checkpoint
  then also considers a block-sparse encoding);
- ``packing``: module name -> :class:`PackSpec`, the packed runtime module the checkpoint
  stores that layer as (e.g. MPD blocks and permutations), looked up in
  :mod:`operators.core.registry`;
- ``constraints``: parameter name -> :class:`Constraint`, any other structure the values must
  keep (a codebook with a fixed assignment, unified blocks, an int8 grid, low-rank factors).

``teacher`` is the uncompressed input model (for distillation) and ``ops`` the ops applied
(for projections that re-run them, such as L-C's C-step).

Structural ops (``neuron_prune``, ``filter_prune``) change ``model`` itself: its layers are
physically smaller (``structural`` is set), and the checkpoint records their new shapes. They
must come before any op that sets masks or packing. ``example_input`` (one batch, inferred when
not given) is what the dependency graph of structural pruning is traced with; its per-sample
shape is recorded.

:meth:`CompressedModel.enforce` projects the weights back onto that state (zero the masked
entries, round to the storage dtype); it runs after every op and every optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class PackSpec:
    """An op's packing decision for one module: a packer name, JSON args, and tensors."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Constraint:
    """Structure one parameter must keep besides its mask and storage dtype.

    ``project_`` puts a tensor onto the structure held fixed (e.g. each cluster's values to
    their mean, the assignment unchanged); ``grad`` maps a gradient to the one of the free
    parameters broadcast back (e.g. a centroid's gradient, the sum of its members', given to
    every member), so that training moves tied weights together.
    """

    def project_(self, tensor: torch.Tensor) -> None:
        """Project ``tensor`` in place onto the held structure."""
        raise NotImplementedError

    def grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of the tied parameterisation (identity by default)."""
        return grad


@dataclass
class CompressedModel:
    """A model together with the compression it must keep (see the module docstring)."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    value_dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    report: list[dict] = field(default_factory=list)
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    packing: dict[str, PackSpec] = field(default_factory=dict)
    example_input: torch.Tensor | None = None
    structural: bool = False  # True once an op physically resized layers
    constraints: dict[str, Constraint] = field(default_factory=dict)
    teacher: nn.Module | None = field(default=None, repr=False)  # the uncompressed model
    ops: list[Any] = field(default_factory=list)  # the ops applied (operators.core.op.Op), in order

    @property
    def input_shape(self) -> list[int] | None:
        """Per-sample input shape of the model, when known."""
        return None if self.example_input is None else list(self.example_input.shape[1:])

    def storage_dtype(self, name: str) -> torch.dtype:
        """The dtype parameter ``name`` is stored in (float32 unless an op changed it)."""
        return self.value_dtypes.get(name, torch.float32)

    def project(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (parameter ``name``) projected onto the compression, as a new tensor."""
        out = tensor.detach().clone()
        self._project_(name, out)
        return out

    @torch.no_grad()
    def enforce(self) -> None:
        """Project every parameter in place: masked entries to +0.0, values to storage dtype."""
        for name, param in self.model.named_parameters():
            self._project_(name, param.data)

    def _project_(self, name: str, tensor: torch.Tensor) -> None:
        constraint = self.constraints.get(name)
        if constraint is not None:
            constraint.project_(tensor)
        mask = self.masks.get(name)
        if mask is not None:
            if mask.device != tensor.device:  # keep the mask next to the weights (cuda)
                mask = self.masks[name] = mask.to(tensor.device)
            tensor.masked_fill_(~mask, 0.0)
        dtype = self.value_dtypes.get(name)
        if dtype is not None and dtype != tensor.dtype:
            tensor.copy_(tensor.to(dtype))
