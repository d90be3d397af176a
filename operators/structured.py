"""Structural pruning ops: ``neuron_prune`` and ``filter_prune``, through torch-pruning.

Whole Linear neurons (``neuron_prune``) or conv filters (``filter_prune``) are physically
removed, with everything that depends on them (BatchNorm channels, residual additions,
concatenations, the next layer's inputs) found by torch-pruning's ``DependencyGraph``: the
result is a smaller dense model that runs on ordinary kernels. Every selected layer loses
``ratio`` of its output channels, ranked by the ``criterion`` (l1 / l2) norm of their whole
dependency group, or chosen by a genetic algorithm (``ga``, see :mod:`operators.ga_prune`). The network's output layer is never pruned.

The report lists, per module, the output channels removed (indices into the original layer),
so a caller can check that removing them equals zeroing them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from operators.strategy import (
    WEIGHT_LAYERS,
    CompressedModel,
    Op,
    check_choice,
    check_number,
    check_unstructured,
    output_layer,
    register,
)

_OUT_HANDLERS = ("prune_out_channels",)


@contextmanager
def _quiet_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no warnings inside (torch-pruning traces the model), mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        model.train(was_training)


def remove_channels(
    cm: CompressedModel,
    op: Op,
    types: tuple[type[nn.Module], ...],
    ratio: float,
    criterion: str,
) -> dict[str, list[int]]:
    """Physically remove ``ratio`` of the output channels of the selected ``types`` layers.

    Returns module name -> removed output-channel indices for every module whose outputs
    shrank (the selected layers and their coupled BatchNorms, residual partners, ...).
    """
    check_unstructured(cm, op.name)
    model = cm.model
    if cm.example_input is None:
        raise ValueError(f"{op.name}: cannot trace the model; pass an example input")
    targets = {id(m) for _, m in op.selected_modules(model, types)}
    last = output_layer(model)
    ignored = [
        m for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and id(m) not in targets
    ]
    if last is not None and id(last) in targets:
        ignored.append(last)
    if len(ignored) == sum(isinstance(m, WEIGHT_LAYERS) for m in model.modules()):
        raise ValueError(f"{op.name}: include/exclude selected no prunable layer")
    names = {id(m): n for n, m in model.named_modules()}
    removed: dict[str, list[int]] = {}
    with _quiet_eval(model):
        pruner = tp.pruner.MetaPruner(
            model,
            cm.example_input.to(next(model.parameters()).device),
            importance=tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2),
            pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                handler = getattr(dep.handler, "__name__", "")
                module = dep.target.module
                if handler in _OUT_HANDLERS and id(module) in names:
                    removed.setdefault(names[id(module)], []).extend(int(i) for i in idxs)
            group.prune()
    cm.structural = True
    return {name: sorted(set(idx)) for name, idx in removed.items()}


def _summary(cm: CompressedModel, removed: dict[str, list[int]]) -> dict[str, Any]:
    return {"removed_channels": removed, "params": sum(p.numel() for p in cm.model.parameters())}


@dataclass(frozen=True, kw_only=True)
class _ChannelPrune(Op):
    STRUCTURAL: ClassVar[bool] = True
    ratio: float
    criterion: str = "l1"
    LAYERS: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("ratio", self.ratio, 0.0, 1.0)
        check_choice("criterion", self.criterion, ("l1", "l2", "ga"))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        if self.criterion == "ga":
            from operators.ga_prune import ga_remove_channels

            return _summary(cm, ga_remove_channels(cm, self, self.LAYERS, self.ratio))
        return _summary(cm, remove_channels(cm, self, self.LAYERS, self.ratio, self.criterion))


@register
@dataclass(frozen=True, kw_only=True)
class NeuronPrune(_ChannelPrune):
    """Remove ``ratio`` of every selected Linear layer's neurons (not the output layer's)."""

    name: ClassVar[str] = "neuron_prune"
    LAYERS: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)


@register
@dataclass(frozen=True, kw_only=True)
class FilterPrune(_ChannelPrune):
    """Remove ``ratio`` of every selected conv layer's filters, with their dependencies."""

    name: ClassVar[str] = "filter_prune"
    LAYERS: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def zero_channels(model: nn.Module, removed: dict[str, list[int]]) -> None:
    """Zero, in place, the removed output channels (weights, bias, BatchNorm affine) of
    ``model``: the dense equivalent of removing them."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, idx in removed.items():
            module = modules[name]
            for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if param is not None:
                    param[idx] = 0


def remove_named_channels(cm: CompressedModel, channels: dict[str, list[int]]) -> dict[str, list[int]]:
    """Physically remove the given output channels of the named conv / Linear layers.

    Dependencies (BatchNorm, the next layer's inputs, flatten) follow through torch-pruning's
    ``DependencyGraph``; a layer keeps at least one channel and the output layer is never
    pruned. Returns the channels removed per named layer.
    """
    check_unstructured(cm, "remove channels")
    if cm.example_input is None:
        raise ValueError("remove channels: cannot trace the model; pass an example input")
    model = cm.model
    modules = dict(model.named_modules())
    last = output_layer(model)
    removed: dict[str, list[int]] = {}
    with _quiet_eval(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=cm.example_input.to(next(model.parameters()).device)
        )
        for name, idxs in channels.items():
            module = modules[name]
            width = module.weight.shape[0]
            idxs = sorted(set(idxs))[: width - 1]
            if not idxs or module is last:
                continue
            fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else (
                tp.prune_conv_out_channels
            )
            group = graph.get_pruning_group(module, fn, idxs=idxs)
            if graph.check_pruning_group(group):
                group.prune()
                removed[name] = idxs
    cm.structural = cm.structural or bool(removed)
    return removed
