"""Compression strategies: an ordered list of steps, each one op, applied to a copy of a model.

A step is a dict such as ``{"op": "prune", "sparsity": 0.9, "scope": "global"}``; its op is
looked up in :data:`operators.core.registry.OPS` (see :mod:`operators.core.op` for the op
protocol and :mod:`operators.core.model` for the state ops leave behind).

In Python, Condensa-style: an op projects (``apply``), the checkpoint packs, the report says
what each op did::

    cm = Compose([Prune(sparsity=0.9), Quantize(dtype="float16")]).apply(model)
    packed = packed_model(cm)  # operators.runtime: runnable, as its checkpoint loads
    cm.report                  # per op: its parameters and what it did
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from operators.core.model import CompressedModel
from operators.core.modes import eval_mode
from operators.core.op import WEIGHT_LAYERS, Op
from operators.core.registry import OPS


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
        return extend(cm, self.ops)


def extend(cm: CompressedModel, ops: list[Op]) -> CompressedModel:
    """Apply ``ops`` in order to ``cm`` in place (after the ops it already carries)."""
    for op in ops:
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
    with eval_mode(model), torch.no_grad():
        for shape in guesses:
            x = torch.zeros(1, *shape, device=device)
            try:
                model(x)
                return x
            except (RuntimeError, ValueError):  # HF models raise ValueError on a wrong size
                continue
    return None
