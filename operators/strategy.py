"""Compression strategies: an ordered list of steps, each one op, applied to a copy of a model.

A step is a dict such as ``{"op": "prune", "sparsity": 0.9, "scope": "global"}``. Every op
is one frozen dataclass registered in :data:`OPS`: its fields are its parameters (every op
also takes ``include`` / ``exclude``, regular expressions searched in module names), its
``__post_init__`` validates them, and ``apply`` compresses a :class:`CompressedModel`.

The state an op leaves behind is what fine-tuning must hold and the checkpoint must store:

- ``masks``: parameter name -> bool tensor, True where the weight is kept;
- ``value_dtypes``: parameter name -> the dtype its values are stored in (float32 if absent);
- ``blocks``: parameter name -> ``(rows, cols)`` of the blocks it was pruned in (the checkpoint
  then also considers a block-sparse encoding);
- ``packing``: module name -> :class:`~operators.packed.PackSpec`, the packed runtime module
  the checkpoint stores that layer as (e.g. MPD blocks and permutations);
- ``constraints``: parameter name -> :class:`Constraint`, any other structure the values must
  keep (a codebook with a fixed assignment, unified blocks, an int8 grid).

``teacher`` is the uncompressed input model (for distillation) and ``ops`` the ops applied
(for projections that re-run them, such as L-C's C-step).

Structural ops (``neuron_prune``, ``filter_prune``) change ``model`` itself: its layers are
physically smaller (``structural`` is set), and the checkpoint records their new shapes. They must come before any op
that sets masks or packing. ``example_input`` (one batch, inferred when not given) is what the
dependency graph of structural pruning is traced with; its per-sample shape is recorded.

:meth:`CompressedModel.enforce` projects the weights back onto that state (zero the masked
entries, round to the storage dtype); it runs after every op and every optimizer step.

In Python, Condensa-style: an op projects (``apply``), the checkpoint packs, the report says
what each op did::

    cm = Compose([Prune(sparsity=0.9), Quantize(dtype="float16")]).apply(model)
    packed = cm.packed()      # the runnable packed model; save_checkpoint writes the same
    cm.report                 # per op: its parameters and what it did

Adding an op::

    @register
    @dataclass(frozen=True, kw_only=True)
    class Cluster(Op):
        name: ClassVar[str] = "cluster"
        bits: int
        def __post_init__(self) -> None:
            super().__post_init__()
            check_number("bits", self.bits, 1, 8, high_inclusive=True)
        def apply(self, cm: CompressedModel) -> dict: ...
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from operators.packed import PackSpec

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
STORAGE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZE_DTYPES = (*STORAGE_DTYPES, "int8")


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
    ops: list[Op] = field(default_factory=list)  # the ops applied, in order

    @property
    def input_shape(self) -> list[int] | None:
        """Per-sample input shape of the model, when known."""
        return None if self.example_input is None else list(self.example_input.shape[1:])

    def packed(self, runtime: str = "auto") -> nn.Module:
        """The packed, runnable model (eval mode, CPU) exactly as its checkpoint loads."""
        from operators.checkpoint import pack_model
        from operators.runtime import select_runtime

        return select_runtime(pack_model(self).eval(), runtime, self.input_shape)

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


# -- parameter checks shared by all ops --------------------------------------------------------


def check_number(
    name: str, value: Any, low: float, high: float, *, high_inclusive: bool = False
) -> float:
    """``value`` as a float in ``[low, high)`` (or ``[low, high]``); ValueError naming ``name``."""
    interval = f"[{low:g}, {high:g}{']' if high_inclusive else ')'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name}: must be a number in {interval}, got {value!r}")
    if not (low <= value and (value <= high if high_inclusive else value < high)):
        raise ValueError(f"{name}: must be in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``; ValueError naming ``name`` and listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_regex(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name}: must be a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{name}: invalid regular expression: {exc}") from None


# -- ops --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Op:
    """Base of all ops: parameters as dataclass fields, ``include`` / ``exclude`` selection."""

    name: ClassVar[str] = ""
    STRUCTURAL: ClassVar[bool] = False  # True for ops that physically resize layers
    include: str | None = None
    exclude: str | None = None

    def __post_init__(self) -> None:
        _check_regex("include", self.include)
        _check_regex("exclude", self.exclude)

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keys a step for this op may carry (besides ``op``)."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Op:
        """Build the op from a step's parameters, naming any unknown or missing one."""
        allowed = cls.parameter_names()
        for key in params:
            if key not in allowed:
                raise ValueError(
                    f"{key}: unknown parameter of {cls.name}; allowed: " + ", ".join(allowed)
                )
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in params:
                raise ValueError(f"{f.name}: required by {cls.name}")
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """The op's parameters, JSON-ready, for reports."""
        return dataclasses.asdict(self)

    def selects(self, module_name: str) -> bool:
        """True if ``include`` (default: everything) matches and ``exclude`` does not."""
        if self.include is not None and re.search(self.include, module_name) is None:
            return False
        return self.exclude is None or re.search(self.exclude, module_name) is None

    def selected_modules(
        self, model: nn.Module, types: tuple[type[nn.Module], ...] | None = None
    ) -> list[tuple[str, nn.Module]]:
        """Modules (optionally only of ``types``) selected by include / exclude."""
        return [
            (name, module)
            for name, module in model.named_modules()
            if (types is None or isinstance(module, types)) and self.selects(name)
        ]

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        """Compress ``cm`` in place; return what was done (JSON-ready) for the report."""
        raise NotImplementedError


OPS: dict[str, type[Op]] = {}


def register(op: type[Op]) -> type[Op]:
    """Class decorator adding an op to :data:`OPS` under its ``name``."""
    OPS[op.name] = op
    return op


def _param_name(module_name: str, param: str) -> str:
    return f"{module_name}.{param}" if module_name else param


def magnitude_masks(tensors: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep-masks removing the ``round(sparsity * total)`` smallest-magnitude entries overall.

    One threshold over all ``tensors`` together; ties are broken by position (a stable sort of
    the concatenated magnitudes), so the result is deterministic and the count exact.
    """
    magnitudes = torch.cat([t.detach().abs().flatten().float() for t in tensors])
    n_prune = round(sparsity * magnitudes.numel())
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    if n_prune:
        order = torch.sort(magnitudes, stable=True).indices
        keep[order[:n_prune]] = False
    return [
        m.view_as(t) for m, t in zip(keep.split([t.numel() for t in tensors]), tensors, strict=True)
    ]


@register
@dataclass(frozen=True, kw_only=True)
class Prune(Op):
    """Unstructured magnitude pruning of Linear / Conv weights (not biases, not norms).

    ``scope="global"``: one threshold over every selected weight; ``"layer"``: each selected
    weight tensor loses the same fraction. Combines with masks from earlier steps (AND).
    """

    name: ClassVar[str] = "prune"
    sparsity: float
    scope: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("sparsity", self.sparsity, 0.0, 1.0)
        check_choice("scope", self.scope, ("global", "layer"))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        names = weight_names(self, cm)
        params = dict(cm.model.named_parameters())
        weights = [cm.project(name, params[name]) for name in names]
        if self.scope == "global":
            masks = magnitude_masks(weights, self.sparsity)
        else:
            masks = [magnitude_masks([w], self.sparsity)[0] for w in weights]
        layers = {}
        for name, mask in zip(names, masks, strict=True):
            mask = add_mask(cm, name, mask)
            layers[name] = int((~mask).sum()) / mask.numel()
        total = sum(m.numel() for m in masks)
        pruned = sum(int((~cm.masks[name]).sum()) for name in names)
        return {"sparsity": pruned / total, "layers": layers}


@register
@dataclass(frozen=True, kw_only=True)
class Quantize(Op):
    """Store the selected modules' floating-point parameters in a lower-precision dtype.

    ``int8``: Linear / Conv weights as int8 with one scale per output channel
    (:mod:`operators.quantization`); other parameters stay float32.
    """

    name: ClassVar[str] = "quantize"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("dtype", self.dtype, QUANTIZE_DTYPES)

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        if self.dtype == "int8":
            from operators.quantization import quantize_int8

            return quantize_int8(self, cm)
        dtype = STORAGE_DTYPES[self.dtype]
        names = [
            _param_name(module_name, param_name)
            for module_name, module in self.selected_modules(cm.model)
            for param_name, param in module.named_parameters(recurse=False)
            if param.is_floating_point()
        ]
        if not names:
            raise ValueError("quantize: include/exclude selected no floating-point parameter")
        for name in names:
            cm.value_dtypes[name] = dtype
        return {"tensors": len(names)}


# -- strategies -------------------------------------------------------------------------------


def parse_steps(steps: Any) -> list[Op]:
    """Validate a strategy and build its ops; ValueError names the step, op or parameter."""
    if not isinstance(steps, list):
        raise ValueError(f"steps: must be a list of steps, got {type(steps).__name__}")
    ops = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise ValueError(f"steps[{i}]: must be an object with an 'op' key")
        if "op" not in step:
            raise ValueError(f"steps[{i}].op: required; allowed: {', '.join(OPS)}")
        op_name = step["op"]
        if not isinstance(op_name, str) or op_name not in OPS:
            raise ValueError(f"steps[{i}].op: unknown op {op_name!r}; allowed: {', '.join(OPS)}")
        try:
            ops.append(OPS[op_name].from_params({k: v for k, v in step.items() if k != "op"}))
        except ValueError as exc:
            raise ValueError(f"steps[{i}].{exc}") from None
    return ops


def validate_steps(steps: list[dict]) -> None:
    """Raise ValueError (naming step index, op or parameter) if ``steps`` is not valid."""
    parse_steps(steps)


def apply_strategy(
    model: nn.Module, steps: list[dict], *, example_input: torch.Tensor | None = None
) -> CompressedModel:
    """Apply ``steps`` in order to a deep copy of ``model``; the input model is left untouched."""
    return Compose(parse_steps(steps)).apply(model, example_input=example_input)


@dataclass
class Compose:
    """A sequence of ops applied in order: the Python face of a strategy."""

    ops: list[Op]

    def apply(
        self, model: nn.Module, *, example_input: torch.Tensor | None = None
    ) -> CompressedModel:
        """Project a deep copy of ``model`` onto every op's constraint set, in order."""
        cm = CompressedModel(copy.deepcopy(model), teacher=model)
        cm.example_input = example_input if example_input is not None else infer_example(model)
        for op in self.ops:
            details = op.apply(cm)
            cm.ops.append(op)
            cm.enforce()
            cm.report.append({"op": op.name, "params": op.params(), **details})
        return cm


def infer_example(model: nn.Module) -> torch.Tensor | None:
    """One zero sample the model accepts, guessed from its first weight layer, or None.

    A Linear first layer takes ``in_features``; a Conv2d first layer is tried on square
    images of common sizes (28, 32, 224, then 8..64) until the forward pass succeeds.
    """
    first = next((m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)), None)
    if first is None:
        return None
    device = next(model.parameters()).device
    if isinstance(first, nn.Linear):
        guesses = [(first.in_features,)]
    elif isinstance(first, nn.Conv2d):
        guesses = [(first.in_channels, s, s) for s in (28, 32, 224, *range(8, 65))]
    else:
        return None
    was_training = model.training
    model.eval()
    try:
        for shape in guesses:
            x = torch.zeros(1, *shape, device=device)
            try:
                with torch.no_grad():
                    model(x)
                return x
            except RuntimeError:
                continue
    finally:
        model.train(was_training)
    return None


def output_layer(model: nn.Module) -> nn.Module | None:
    """The last Linear or Conv layer in module order: the network's classifier."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    return layers[-1] if layers else None


def check_unstructured(cm: CompressedModel, op_name: str) -> None:
    """ValueError if ``cm`` already carries masks or packing (structural ops must come first)."""
    if cm.masks or cm.packing:
        raise ValueError(
            f"{op_name}: structural pruning must come before ops that set masks or packing"
        )


def add_mask(cm: CompressedModel, name: str, mask: torch.Tensor) -> torch.Tensor:
    """AND ``mask`` into ``cm.masks[name]`` and return the combined mask."""
    if name in cm.masks:
        mask = mask & cm.masks[name].to(mask.device)
    cm.masks[name] = mask
    return mask


def weight_names(
    op: Op, cm: CompressedModel, types=WEIGHT_LAYERS, what: str = "Linear or Conv"
) -> list[str]:
    """``<module>.weight`` of every selected layer of ``types`` (ValueError if none)."""
    names = [_param_name(n, "weight") for n, _ in op.selected_modules(cm.model, types)]
    if not names:
        raise ValueError(f"{op.name}: include/exclude selected no {what} layer")
    return names
