"""Structural pruning ops: ``neuron_prune`` and ``filter_prune``.

Every selected layer loses ``ratio`` of its output channels, physically removed with their
dependencies (:mod:`operators.ops.channels.graph`), ranked by the ``criterion`` (l1 / l2)
norm of their whole dependency group, or chosen by a genetic algorithm (``ga``, see
:mod:`operators.ops.channels.ga_select`). The network's output layer is never pruned.

The report lists, per module, the output channels removed (indices into the original layer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from operators.core.model import CompressedModel
from operators.core.op import Op, check_choice, check_number
from operators.core.registry import register
from operators.ops.channels.ga_select import ga_remove_channels
from operators.ops.channels.graph import attention_layers, remove_channels


def _summary(cm: CompressedModel, removed: dict[str, list[int]], skipped: dict[str, str]) -> dict[str, Any]:
    summary = {"removed_channels": removed, "params": sum(p.numel() for p in cm.model.parameters())}
    if skipped:
        summary["skipped"] = skipped
    return summary


@dataclass(frozen=True, kw_only=True)
class _ChannelPrune(Op):
    STRUCTURAL: ClassVar[bool] = True
    STRENGTH: ClassVar[str | None] = "ratio"
    ratio: float
    criterion: str = "l1"
    LAYERS: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("ratio", self.ratio, 0.0, 1.0)
        check_choice("criterion", self.criterion, ("l1", "l2", "ga"))

    def staged(self, previous: float, target: float) -> _ChannelPrune:
        """Channels already removed are gone: remove the share of what is left that brings
        the total to ``target``."""
        return dataclasses.replace(self, ratio=(target - previous) / (1.0 - previous))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        fixed = attention_layers(cm.model)
        skipped = {n: fixed[n] for n, _ in self.selected_modules(cm.model, self.LAYERS) if n in fixed}
        if self.criterion == "ga":
            return _summary(cm, ga_remove_channels(cm, self, self.LAYERS, self.ratio), skipped)
        return _summary(
            cm, remove_channels(cm, self, self.LAYERS, self.ratio, self.criterion), skipped
        )


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
