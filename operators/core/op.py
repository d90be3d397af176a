"""The op protocol: parameters as dataclass fields, checks, and layer selection.

Every op is one frozen dataclass subclassing :class:`Op`, registered with
:func:`operators.core.registry.register` in its folder under :mod:`operators.ops`: its fields
are its parameters (every op also takes ``include`` / ``exclude``, regular expressions
searched in module names), its ``__post_init__`` validates them (with :func:`check_number`
and :func:`check_choice`, so errors name the parameter), and ``apply`` compresses a
:class:`~operators.core.model.CompressedModel` in place and returns what it did for the
report. ``PACKERS`` lists the packed module classes its :class:`~operators.core.model.PackSpec`
kinds pack layers into.

The helpers below select the layers an op works on (:meth:`Op.selected_modules`,
:func:`weight_names`, :func:`selected_weights`), keep the network's classifier apart
(:func:`output_layer`) and combine masks (:func:`add_mask`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import CompressedModel

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PACKABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)  # layers packed kinds rebuild


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


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound if None); ValueError naming it."""
    if high is not None:
        what = f"an integer in [{low}, {high}]"
    else:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be {what}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}: must be {what}, got {value!r}")
    return value


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


# -- the op base ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Op:
    """Base of all ops: parameters as dataclass fields, ``include`` / ``exclude`` selection."""

    name: ClassVar[str] = ""
    STRUCTURAL: ClassVar[bool] = False  # True for ops that physically resize layers
    STRENGTH: ClassVar[str | None] = None  # the fraction a ``schedule`` ramps up (e.g. sparsity)
    PACKERS: ClassVar[dict[str, dict[type[nn.Module], type[nn.Module]]]] = {}
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

    def staged(self, previous: float, target: float) -> Op:
        """This op for one stage of a schedule: from strength ``previous`` (already applied) to
        ``target``, both fractions of the original layers. Masking ops re-apply at ``target``
        (their masks accumulate); ops that remove what they prune override this."""
        return dataclasses.replace(self, **{self.STRENGTH: target})

    def start_strength(self, cm: CompressedModel) -> float:
        """The strength ``cm`` already has for this op, where a schedule's ramp starts (0.0:
        none; masking ops override it with the share of their weights already zero)."""
        return 0.0


# -- layer selection --------------------------------------------------------------------------


def param_name(module_name: str, param: str) -> str:
    """The state-dict name of parameter ``param`` of module ``module_name``."""
    return f"{module_name}.{param}" if module_name else param


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
    names = [param_name(n, "weight") for n, _ in op.selected_modules(cm.model, types)]
    if not names:
        raise ValueError(f"{op.name}: include/exclude selected no {what} layer")
    return names


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
