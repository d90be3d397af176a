"""Physical channel removal through torch-pruning's dependency graph, one graph per model.

Whole Linear neurons or conv filters are removed with everything that depends on them
(BatchNorm channels, residual additions, concatenations, the next layer's inputs), found by
torch-pruning's ``DependencyGraph``: the result is a smaller dense model that runs on ordinary
kernels. The graph of a model is traced once (:func:`dependency_graph`) and reused by every
channel pruner (``l1``/``l2`` ranking, the GA) and by ``hspg``'s removal; pruning a group
updates it in place (and a graph traced before another op resized a layer is traced again).
The network's output layer is never pruned. In a transformer the layers inside attention
modules, and every layer whose channels are coupled to them (the residual stream), are left
alone (:func:`skipped_layers`: whole heads are ``head_prune``'s); its FFN neurons are removed.

With ``round_to`` (:func:`remove_channels`; the default space asks :data:`ROUND_TO` of every
CNN, :func:`channel_round_to`) each layer keeps a multiple of it, set per layer through
torch-pruning's ``pruning_ratio_dict``; a layer narrower than ``2 * round_to`` and a group that
would not come out a multiple are left at full width and reported, never given odd widths.

Removal functions return, per module, the output channels removed (indices into the original
layer), so a caller can check that removing them equals zeroing them (:func:`zero_channels`).
"""

from __future__ import annotations

import weakref

import torch
import torch_pruning as tp
from torch import nn

from operators.core.model import CompressedModel
from operators.core.modes import eval_mode
from operators.core.op import WEIGHT_LAYERS, Op, check_unstructured, output_layer

_OUT_HANDLERS = ("prune_out_channels",)


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, tp.DependencyGraph]] = (
    weakref.WeakKeyDictionary()
)


def _shapes(model: nn.Module) -> tuple:
    """The modules and shapes a graph was traced on: another op (``head_prune``, ``lowrank``)
    that resized or replaced a layer since makes the cached graph stale."""
    return tuple((id(m), tuple(m.weight.shape)) for m in model.modules() if isinstance(m, WEIGHT_LAYERS))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def dependency_graph(cm: CompressedModel) -> tp.DependencyGraph:
    """The dependency graph of ``cm.model``, traced with ``cm.example_input`` on first use."""
    model = cm.model
    shapes, graph = _GRAPHS.get(model, (None, None))
    if graph is None or shapes != _shapes(model):
        if cm.example_input is None:
            raise ValueError("remove channels: cannot trace the model; pass an example input")
        with eval_mode(model, quiet=True):
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=cm.example_input.to(_device(model))
            )
        _GRAPHS[model] = (_shapes(model), graph)
    return graph


def attention_layers(model: nn.Module) -> dict[str, str]:
    """Weight layers whose widths an attention module fixes (its reshape into heads), by name,
    with the reason: channel removal leaves them, and every group they are in, alone (whole
    heads are ``head_prune``'s)."""
    fixed = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__:
            for sub, layer in module.named_modules():
                if isinstance(layer, WEIGHT_LAYERS) and sub:
                    fixed[f"{name}.{sub}" if name else sub] = (
                        f"inside {type(module).__name__}: its heads fix the layer's width"
                    )
    return fixed


def _prune_out(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else (
        tp.prune_conv_out_channels
    )


def _touched(group: tp.Group, fixed: dict[int, str]) -> str | None:
    """The first attention-fixed layer (by name) that pruning ``group`` would resize."""
    return next((fixed[id(dep.target.module)] for dep, _ in group
                 if id(dep.target.module) in fixed), None)  # fmt: skip


def _fixed_ids(model: nn.Module, fixed: dict[str, str]) -> dict[int, str]:
    modules = dict(model.named_modules())
    return {id(modules[name]): name for name in fixed}


def skipped_layers(
    cm: CompressedModel, op: Op, types: tuple[type[nn.Module], ...]
) -> dict[str, str]:
    """The selected ``types`` layers channel removal leaves alone, with the reason: those inside
    an attention module (:func:`attention_layers`) and those whose channels are coupled to one
    (a transformer's residual stream, whose width every attention projection reads). The FFN
    neurons of a transformer block (its first Linear's outputs, the second's inputs) are not."""
    model = cm.model
    fixed = attention_layers(model)
    selected = [n for n, _ in op.selected_modules(model, types)]
    skipped = {n: fixed[n] for n in selected if n in fixed}
    if not fixed or cm.example_input is None:
        return skipped
    graph, ids, modules = dependency_graph(cm), _fixed_ids(model, fixed), dict(model.named_modules())
    for name in selected:
        module = modules[name]
        if name in fixed or module is output_layer(model):
            continue
        hit = _touched(graph.get_pruning_group(module, _prune_out(module), idxs=[0]), ids)
        if hit is not None:
            skipped[name] = f"its channels are coupled to {hit}, an attention projection"
    return skipped


ROUND_TO = 8  # onnxruntime's and oneDNN's CPU conv kernels block channels by 8 (16 on AVX-512)


def channel_round_to(model: nn.Module) -> int:
    """The ``round_to`` that keeps a CNN fast after filter removal: :data:`ROUND_TO` when the
    model has a conv layer, else 1. Odd widths hit slow onnxruntime kernels: timm resnet18
    (28x28, batch 64, 2 threads) with 0.409 of its filters removed ran in 30.7 ms with odd
    widths (37, 75, ...), 4.7 ms with widths rounded to 8, 16.6 ms dense. Layers too narrow to
    round are left at full width (:func:`narrow_layers`)."""
    return ROUND_TO if any(isinstance(m, nn.Conv2d) for m in model.modules()) else 1


def narrow_layers(
    model: nn.Module, op: Op, types: tuple[type[nn.Module], ...], round_to: int
) -> dict[str, str]:
    """The selected ``types`` layers with fewer than ``2 * round_to`` output channels, with the
    reason: removal with ``round_to`` leaves them (and every layer coupled to them) at full
    width rather than giving them an odd width or halving them."""
    if round_to <= 1:
        return {}
    return {
        name: f"{m.weight.shape[0]} channels, fewer than 2 x round_to ({2 * round_to}): "
        "left at full width rather than an odd or halved one"
        for name, m in op.selected_modules(model, types) if m.weight.shape[0] < 2 * round_to
    }  # fmt: skip


def _rounded_ratios(modules: list[nn.Module], ratio: float, round_to: int) -> dict[nn.Module, float]:
    """Per layer, the pruning ratio that keeps the multiple of ``round_to`` nearest to
    ``(1 - ratio)`` of its channels (at least ``round_to``), for torch-pruning's
    ``pruning_ratio_dict`` (it keeps ``int(width * (1 - ratio))`` channels, hence the half)."""
    ratios = {}
    for module in modules:
        width = module.weight.shape[0]
        kept = max(round_to, round(width * (1.0 - ratio) / round_to) * round_to)
        ratios[module] = 0.0 if kept >= width else 1.0 - (kept + 0.5) / width
    return ratios


def _grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise: torch-pruning removes its channels per group."""
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.out_channels


def _unroundable(group: tp.Group, graph: tp.DependencyGraph, round_to: int) -> str | None:
    """Why pruning ``group`` would not keep a multiple of ``round_to`` channels in every layer
    it shrinks, or None: a grouped conv (torch-pruning applies the rounded count per group,
    removing ``groups`` times too many) or a layer left at another width."""
    for dep, idxs in group:
        module = dep.target.module
        if _grouped(module):
            return (f"coupled to a grouped conv (groups={module.groups}) whose channels "
                    "torch-pruning removes per group, so round_to does not hold: left at full width")  # fmt: skip
        if getattr(dep.handler, "__name__", "") not in _OUT_HANDLERS:
            continue
        width = graph.get_out_channels(module)
        if width is not None and (width - len(idxs)) % round_to:
            return (f"torch-pruning would keep {width - len(idxs)} of {width} channels, not a "
                    f"multiple of round_to ({round_to}): left at full width")  # fmt: skip
    return None


def remove_channels(
    cm: CompressedModel,
    op: Op,
    types: tuple[type[nn.Module], ...],
    ratio: float,
    criterion: str,
    skip: dict[str, str] | None = None,
    *,
    round_to: int = 1,
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Physically remove ``ratio`` of the output channels of the selected ``types`` layers but
    those in ``skip`` (default: :func:`skipped_layers`).

    With ``round_to`` > 1 every layer keeps a multiple of ``round_to`` channels, the one
    nearest to ``(1 - ratio)`` of its width (torch-pruning's ``pruning_ratio_dict`` and
    ``round_to``); layers narrower than ``2 * round_to`` (:func:`narrow_layers`), and any whose
    group would not come out a multiple (a grouped conv), are left at full width.

    Returns module name -> removed output-channel indices for every module whose outputs
    shrank (the selected layers and their coupled BatchNorms, residual partners, ...), and
    the selected layers left alone with the reason.
    """
    check_unstructured(cm, op.name)
    model = cm.model
    if cm.example_input is None:
        raise ValueError(f"{op.name}: cannot trace the model; pass an example input")
    narrow = narrow_layers(model, op, types, round_to)
    fixed = {**(skipped_layers(cm, op, types) if skip is None else skip), **narrow}
    selected = [m for n, m in op.selected_modules(model, types) if n not in fixed]
    targets = {id(m) for m in selected}
    last = output_layer(model)
    ignored = [
        m for m in model.modules() if isinstance(m, WEIGHT_LAYERS) and id(m) not in targets
    ]
    if last is not None and id(last) in targets:
        ignored.append(last)
    if len(ignored) == sum(isinstance(m, WEIGHT_LAYERS) for m in model.modules()):
        if narrow:  # what was selected is too narrow to round: left as it is, and said so
            return {}, fixed
        raise ValueError(f"{op.name}: include/exclude selected no prunable layer")
    names = {id(m): n for n, m in model.named_modules()}
    removed: dict[str, list[int]] = {}
    rounding = round_to > 1
    with eval_mode(model, quiet=True):
        pruner = tp.pruner.MetaPruner(
            model,
            cm.example_input.to(_device(model)),
            importance=tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2),
            pruning_ratio=ratio,
            pruning_ratio_dict=_rounded_ratios(selected, ratio, round_to) if rounding else None,
            ignored_layers=ignored,
            round_to=round_to if rounding else None,
        )
        for group in pruner.step(interactive=True):
            root = names.get(id(group[0][0].target.module), "?")
            why = _unroundable(group, pruner.DG, round_to) if rounding else None
            if why is not None:
                fixed[root] = why
                continue
            for dep, idxs in group:
                handler = getattr(dep.handler, "__name__", "")
                module = dep.target.module
                if handler in _OUT_HANDLERS and id(module) in names:
                    removed.setdefault(names[id(module)], []).extend(int(i) for i in idxs)
            group.prune()
    _GRAPHS[model] = (_shapes(model), pruner.DG)  # updated by the pruning: reuse it
    cm.structural = True
    return {name: sorted(set(idx)) for name, idx in removed.items()}, fixed


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
    model = cm.model
    modules = dict(model.named_modules())
    last = output_layer(model)
    fixed = attention_layers(model)
    ids = _fixed_ids(model, fixed)
    removed: dict[str, list[int]] = {}
    graph = dependency_graph(cm)
    with eval_mode(model, quiet=True):
        for name, idxs in channels.items():
            module = modules[name]
            width = module.weight.shape[0]
            idxs = sorted(set(idxs))[: width - 1]
            if not idxs or module is last or name in fixed:
                continue
            group = graph.get_pruning_group(module, _prune_out(module), idxs=idxs)
            if _touched(group, ids) is None and graph.check_pruning_group(group):
                group.prune()
                removed[name] = idxs
    _GRAPHS[model] = (_shapes(model), graph)  # pruned in place: still the model's graph
    cm.structural = cm.structural or bool(removed)
    return removed
