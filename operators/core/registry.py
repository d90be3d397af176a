"""The one registry: ops, module kinds and packers, each filled by the unit that defines it.

- **ops** (:data:`OPS`): name -> op class (:class:`operators.core.op.Op`); an op folder under
  :mod:`operators.ops` registers its class with :func:`register`, and with it the packers its
  class lists in ``PACKERS`` (``{packing kind: {layer type: packed module class}}``: what a
  :class:`~operators.core.model.PackSpec` of that kind packs a layer into).
- **module kinds** (:data:`MODULE_KINDS`): the layers a packed checkpoint can hold, and how
  each is described (JSON constructor arguments) and rebuilt. Plain kinds (``linear``,
  ``conv2d``, ``batchnorm1d``, ``batchnorm2d``) are ordinary torch layers with other shapes,
  written when structural pruning made a layer physically smaller; packed kinds
  (``mpd_linear``, ``clustered``, ``int8``, ``unified``, ``lowrank``, ...) are runtime modules
  that compute a compressed layer, each a :class:`PackedModule` subclass decorated with
  :func:`register_kind` in its op's folder.

:mod:`operators.format` and :mod:`operators.runtime` find kinds only through this module and
never import an op; ``import operators`` imports every op (``operators.ops``), so the tables
are complete whenever any part of the package is used.

A :class:`PackedModule` provides ``pack(dense_module, spec)`` (build it from a projected dense
layer and its spec), ``config()`` (its constructor arguments), ``to_dense()`` (the equivalent
plain layer), ``executed_macs(output)`` (what it really computes) and ``SOURCES`` (its
parameter names -> the dense layer's, so storage dtypes carry over). Kinds whose forward is
gather, compute, gather (MPD) set ``FOLDABLE`` and provide ``rows``, ``cols``,
``padded_rows``, ``gathers()``, ``skip_output_gather`` and ``fold_input_gather()``, which
:func:`operators.runtime.fold_permutations` uses to merge consecutive permutations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from operators.core.model import PackSpec

if TYPE_CHECKING:
    from operators.core.op import Op


@dataclass(frozen=True)
class ModuleKind:
    """How a module of one kind is described (``args``) and rebuilt (``build(**args)``)."""

    name: str
    type: type[nn.Module]
    args: Callable[[nn.Module], dict[str, Any]]
    build: Callable[..., nn.Module]


MODULE_KINDS: dict[str, ModuleKind] = {}


def _plain(name: str, cls: type[nn.Module], keys: tuple[str, ...]) -> None:
    def args(m: nn.Module) -> dict[str, Any]:
        out = {}
        for key in keys:
            value = getattr(m, key) if key != "bias" else m.bias is not None
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def build(**kwargs: Any) -> nn.Module:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})

    MODULE_KINDS[name] = ModuleKind(name, cls, args, build)


_plain("linear", nn.Linear, ("in_features", "out_features", "bias"))
_plain(
    "conv2d",
    nn.Conv2d,
    ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
     "bias", "padding_mode"),
)  # fmt: skip
for _name, _cls in (("batchnorm1d", nn.BatchNorm1d), ("batchnorm2d", nn.BatchNorm2d)):
    _plain(_name, _cls, ("num_features", "eps", "momentum", "affine", "track_running_stats"))
PLAIN_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def register_kind(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator adding a module class (``kind`` name, ``config()`` giving its constructor
    arguments) to :data:`MODULE_KINDS`: a packed kind, or a composite such as ``lowrank``."""
    MODULE_KINDS[cls.kind] = ModuleKind(cls.kind, cls, lambda m: m.config(), cls)
    return cls


def kind_of(module: nn.Module) -> str | None:
    """The registered kind of ``module`` (its type, or the torch layer it computes as: see
    :func:`plain_layer_type`), or None."""
    layer_type = plain_layer_type(module)
    for kind in MODULE_KINDS.values():
        if layer_type is kind.type:
            return kind.name
    return None


def describe(module: nn.Module) -> dict[str, Any] | None:
    """``{"kind", "args"}`` of a registered module, or None for any other module."""
    kind = kind_of(module)
    return None if kind is None else {"kind": kind, "args": MODULE_KINDS[kind].args(module)}


RESIZED = "resized"
# The size attributes torch-pruning updates when it shrinks a layer of any (sub)class.
SIZE_ATTRIBUTES = ("in_features", "out_features", "in_channels", "out_channels", "num_features",
                   "num_channels", "embed_dim")  # fmt: skip


def _direct_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in module._parameters.items() if v is not None},
            **{k: v for k, v in module._buffers.items() if v is not None}}  # fmt: skip


def describe_resized(module: nn.Module, base: nn.Module) -> dict[str, Any] | None:
    """``{"kind": "resized", "args": {"shapes", "attrs"}}`` for a module of a type with no
    registered kind (timm's ``BatchNormAct2d``, a Linear subclass) whose own tensors have other
    shapes than in the architecture (structural pruning shrank it), else None. Rebuilt by
    :func:`resize_module` on the architecture's module, so its type and forward are kept."""
    mine, theirs = _direct_tensors(module), _direct_tensors(base)
    shapes = {k: list(v.shape) for k, v in mine.items()}
    if mine.keys() != theirs.keys() or all(list(theirs[k].shape) == shapes[k] for k in shapes):
        return None
    attrs = {a: getattr(module, a) for a in SIZE_ATTRIBUTES
             if isinstance(getattr(module, a, None), int) and getattr(module, a) != getattr(base, a)}  # fmt: skip
    return {"kind": RESIZED, "args": {"shapes": shapes, "attrs": attrs}}


def resize_module(module: nn.Module, args: dict[str, Any]) -> None:
    """Give ``module`` (the architecture's, in place) the tensor shapes and size attributes a
    ``resized`` record names; the values are the checkpoint's, loaded afterwards."""
    shapes, attrs = args.get("shapes"), args.get("attrs", {})
    tensors = _direct_tensors(module)
    if not isinstance(shapes, dict) or shapes.keys() != tensors.keys() or not isinstance(attrs, dict):
        raise ValueError(f"a resized record must name the tensors {sorted(tensors)}")
    for key, shape in shapes.items():
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**31 for d in shape)):
            raise ValueError(f"resized: bad shape for {key}: {shape!r}")
        old = tensors[key]
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if key in module._parameters:
            module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            module._buffers[key] = new
    for key, value in attrs.items():
        if key not in SIZE_ATTRIBUTES or not isinstance(value, int):
            raise ValueError(f"resized: unknown size attribute {key!r}")
        setattr(module, key, value)


def build_module(kind: str, args: dict[str, Any]) -> nn.Module:
    """A freshly built module of ``kind`` (ValueError naming an unknown kind or bad args)."""
    if kind not in MODULE_KINDS:
        raise ValueError(f"unknown module kind {kind!r}; known: {', '.join(MODULE_KINDS)}")
    try:
        return MODULE_KINDS[kind].build(**args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot build a {kind} module from {args}: {exc}") from None


class PackedModule(nn.Module):
    """Base of runtime modules that compute a compressed layer (see the module docstring)."""

    kind: ClassVar[str] = ""
    SOURCES: ClassVar[dict[str, str]] = {}
    FOLDABLE: ClassVar[bool] = False  # gather-compute-gather kinds whose permutations fold

    @classmethod
    def pack(cls, dense: nn.Module, spec: PackSpec) -> PackedModule:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        raise NotImplementedError

    def executed_macs(self, output: torch.Tensor) -> int:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, decoded on each read, for model code that reads a layer's
        ``.weight`` (Hugging Face models read its dtype); the packed form computes without it."""
        return self.to_dense().weight


PACKERS: dict[str, dict[type[nn.Module], type[PackedModule]]] = {}
OPS: dict[str, type[Op]] = {}


def register(op: type[Op]) -> type[Op]:
    """Class decorator adding an op to :data:`OPS` under its ``name``, with its ``PACKERS``."""
    if op.name in OPS and OPS[op.name] is not op:
        raise ValueError(f"op {op.name!r} is registered twice")
    OPS[op.name] = op
    PACKERS.update(op.PACKERS)
    return op


# Subclasses of torch layers that compute exactly what their base computes (they override
# ``forward`` only for TorchScript), by qualified name: packed like their base.
EQUIVALENT_LAYERS: dict[str, type[nn.Module]] = {"timm.layers.linear.Linear": nn.Linear}


def plain_layer_type(module: nn.Module) -> type[nn.Module]:
    """The plain torch layer (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``) ``module``
    computes as: for a subclass that does not override ``forward``
    (``NonDynamicallyQuantizableLinear``) or is listed in :data:`EQUIVALENT_LAYERS` (timm's
    ``Linear``), that base; for anything else its own type."""
    cls = type(module)
    listed = EQUIVALENT_LAYERS.get(f"{cls.__module__}.{cls.__qualname__}")
    if listed is not None:
        return listed
    for base in cls.__mro__:
        if base in PLAIN_LAYERS and cls.forward is base.forward:
            return base
    return cls


def pack_module(dense: nn.Module, spec: PackSpec) -> PackedModule:
    """The packed module for ``dense`` (already projected) according to ``spec``."""
    classes = PACKERS.get(spec.kind)
    layer_type = plain_layer_type(dense)
    if classes is None or layer_type not in classes:
        raise ValueError(f"no packed form {spec.kind!r} for {type(dense).__name__}")
    return classes[layer_type].pack(dense, spec)
