"""Structural pruning ops: ``neuron_prune`` and ``filter_prune``.

Every selected layer loses ``ratio`` of its output channels, physically removed with their
dependencies (:mod:`operators.ops.channels.graph`), ranked by the ``criterion`` (l1 / l2)
norm of their whole dependency group, or chosen by a genetic algorithm (``ga``, see
:mod:`operators.ops.channels.ga_select`). The network's output layer is never pruned.

With ``round_to`` > 1 (l1 / l2 only) every layer keeps a multiple of ``round_to`` channels,
the one nearest to ``1 - ratio`` of its width; layers narrower than ``2 * round_to`` stay whole.

The report lists, per module, the output channels removed (indices into the original layer),
and under ``skipped`` the selected layers left alone with the reason: on a transformer its
attention projections and the residual stream coupled to them (its FFN neurons go); with
``round_to``, the layers too narrow to round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from operators.core.model import CompressedModel
from operators.core.op import Op, check_choice, check_int, check_number
from operators.core.registry import register
from operators.ops.channels.ga_select import ga_remove_channels
from operators.ops.channels.graph import remove_channels, skipped_layers


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
    round_to: int = 1  # kept channels a multiple of this (CPU kernels block channels by 8/16)
    LAYERS: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("ratio", self.ratio, 0.0, 1.0)
        check_choice("criterion", self.criterion, ("l1", "l2", "ga"))
        check_int("round_to", self.round_to, 1, 256)
        if self.round_to > 1 and self.criterion == "ga":
            raise ValueError(f"{self.name}: round_to works with criterion l1 or l2, not ga")

    def staged(self, previous: float, target: float) -> _ChannelPrune:
        """Channels already removed are gone: remove the share of what is left that brings
        the total to ``target``."""
        return dataclasses.replace(self, ratio=(target - previous) / (1.0 - previous))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        skipped = skipped_layers(cm, self, self.LAYERS)
        if self.criterion == "ga":
            removed = ga_remove_channels(cm, self, self.LAYERS, self.ratio, skip=skipped)
        else:
            removed, skipped = remove_channels(
                cm, self, self.LAYERS, self.ratio, self.criterion, skipped, round_to=self.round_to
            )
        return _summary(cm, removed, skipped)


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
