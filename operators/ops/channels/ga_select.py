"""``filter_prune`` / ``neuron_prune`` with ``criterion: ga``: genetic channel selection.

Layers are pruned one at a time, most robust first (:func:`operators.ops.channels.ga.layer_sensitivity_order`,
measured as the KL divergence of the network's outputs from the uncompressed model's on the
calibration batch). For each layer a genetic algorithm picks exactly the channels to keep:

* cheap fitness, for the whole population: how well the kept channels rebuild the next
  layer's output (:class:`operators.ops.channels.ga.ReconstructionFitness`, ThiNet-style), where the next
  layer is the one that consumes this layer's channels directly; a layer without such a
  consumer (a residual branch) is scored by the L1 norm of what it drops instead;
* expensive fitness, for the best few: the KL divergence of the whole network's outputs from
  the uncompressed model's when the dropped channels are silenced.

The L1 choice seeds the population, so the GA never returns a set worse by its own fitness
than magnitude ranking. The channels are then removed physically through torch-pruning
(:func:`operators.ops.channels.graph.remove_named_channels`); fine-tune afterwards with ``kd``
(distillation from the uncompressed model), as the method prescribes.

The calibration data is ``cm.example_input``: the workers pass a batch of training samples.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.model import CompressedModel
from operators.core.modes import eval_mode
from operators.core.op import WEIGHT_LAYERS, Op, output_layer
from operators.ops.channels.ga import (
    ReconstructionFitness,
    channel_contributions,
    layer_sensitivity_order,
    select_channels_ga,
)
from operators.ops.channels.graph import remove_named_channels, skipped_layers

MIN_CALIBRATION = 16


@contextmanager
def _silenced(module: nn.Module, channels: list[int]) -> Iterator[None]:
    """Zero the given output channels of ``module``'s output while inside (the last dimension
    of a Linear's output, which may be a sequence of tokens; dimension 1 otherwise)."""

    def hook(_m: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        if isinstance(module, nn.Linear):
            output[..., channels] = 0
        else:
            output[:, channels] = 0
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _consumers(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module]:
    """(the next weight layer that reads exactly this layer's channels, the module whose output
    to silence: a BatchNorm right after the layer if any, else the layer itself)."""
    named = list(model.named_modules())
    index = next(i for i, (n, _) in enumerate(named) if n == name)
    layer = named[index][1]
    width = layer.weight.shape[0]
    silence: nn.Module = layer
    for _, module in named[index + 1 :]:
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and silence is layer:
            if module.num_features == width:
                silence = module
            continue
        if isinstance(module, WEIGHT_LAYERS):
            reads = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            groups = getattr(module, "groups", 1)
            return (module if reads == width and groups == 1 else None), silence
    return None, silence


def _captured_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def ga_remove_channels(
    cm: CompressedModel,
    op: Op,
    types: tuple[type[nn.Module], ...],
    ratio: float,
    *,
    skip: dict[str, str] | None = None,
    seed: int = 0,
    population: int = 24,
    generations: int = 20,
) -> dict[str, list[int]]:
    """Remove ``ratio`` of each selected layer's output channels, chosen by the GA, but those
    of the layers in ``skip`` (default: :func:`~operators.ops.channels.graph.skipped_layers`:
    attention projections and what is coupled to them)."""
    x = cm.example_input
    if x is None or x.shape[0] < MIN_CALIBRATION:
        raise ValueError(
            f"{op.name}: criterion ga needs a calibration batch of at least {MIN_CALIBRATION} "
            "samples as the example input"
        )
    model = cm.model
    device = next(model.parameters()).device
    x = x.to(device)
    half = x.shape[0] // 2
    fit_x, held_x = x[:half], x[half:]
    teacher = copy.deepcopy(model).eval()
    with torch.no_grad():
        target = F.log_softmax(teacher(held_x), dim=1)

    def divergence(m: nn.Module) -> float:
        with torch.no_grad():
            out = F.log_softmax(m(held_x), dim=1)
        return float(F.kl_div(out, target, log_target=True, reduction="batchmean"))

    with eval_mode(model):
        last = output_layer(model)
        fixed = skipped_layers(cm, op, types) if skip is None else skip
        names = [n for n, m in op.selected_modules(model, types) if m is not last and n not in fixed]
        if not names:
            raise ValueError(f"{op.name}: include/exclude selected no prunable layer")
        order = layer_sensitivity_order(model, names, lambda m: -divergence(m), ratios=(0.3, 0.6))
        removed: dict[str, list[int]] = {}
        for step, (name, _sensitivity) in enumerate(order):
            modules = dict(model.named_modules())
            layer = modules[name]
            width = layer.weight.shape[0]
            keep = max(1, width - round(ratio * width))
            if keep == width:
                continue
            consumer, silence = _consumers(model, name)
            cheap = _cheap_fitness(model, layer, consumer, fit_x)

            def expensive(channels: list[int], width: int = width, silence: nn.Module = silence) -> float:
                dropped = sorted(set(range(width)) - set(channels))
                with _silenced(silence, dropped):
                    return divergence(model)

            norms = layer.weight.detach().abs().reshape(width, -1).sum(dim=1)
            l1_choice = torch.argsort(norms, descending=True, stable=True)[:keep].tolist()
            chosen = select_channels_ga(
                width,
                keep,
                cheap,
                expensive,
                top_k=3,
                population=population,
                generations=generations,
                seed=seed + step,
                initial=[sorted(l1_choice)],
            )
            dropped = sorted(set(range(width)) - set(chosen))
            removed.update(remove_named_channels(cm, {name: dropped}))
    return removed


def _cheap_fitness(
    model: nn.Module, layer: nn.Module, consumer: nn.Module | None, x: torch.Tensor
) -> Callable[[list[int]], float]:
    """Reconstruction error of the consumer's output, or the dropped L1 mass without one."""
    if consumer is not None:
        inputs = _captured_input(model, consumer, x)
        return ReconstructionFitness(channel_contributions(inputs, consumer))
    norms = layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).sum(dim=1).double()
    total = float(norms.sum()) or 1.0
    return lambda channels: 1.0 - float(norms[list(channels)].sum()) / total
