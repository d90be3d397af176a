"""Choosing, per layer and per device, whether a compressed layer runs packed or dense.

"Measure, do not assume": for every layer that has a packed form (an MPD layer, or a Linear
whose weight is mostly zeros and could run as CSR) :func:`select_runtime` times the dense
and the packed form on the device, with the layer's real input shape, at batch 1 and a small
batch, and keeps the packed form only where it is at least as fast at both. Decisions are
cached in-process per (form, shape, device, threads), so loading the same architecture again
costs no timing. Afterwards :func:`fold_permutations` merges an MPD layer's output gather into
the next MPD layer's input gather where only channel-wise modules lie between them.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from operators.packed import _MPD, PackedModule, SparseLinear

RUNTIMES = ("auto", "dense", "packed")
SPARSE_DENSITY = 0.5  # a Linear with at most this fraction of nonzeros gets a CSR candidate
TIMING_BATCHES = (1, 16)
TIMING_WARMUP, TIMING_REPEATS = 2, 7
_decisions: dict[tuple, bool] = {}
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Identity, nn.MaxPool2d,
                nn.AvgPool2d)  # fmt: skip


def _candidates(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """name -> (dense form, packed form) for every layer that has both."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, PackedModule):
            out[name] = (module.to_dense(), module)
        elif isinstance(module, nn.Linear):
            weight = module.weight.detach()
            if int(torch.count_nonzero(weight)) <= SPARSE_DENSITY * weight.numel():
                out[name] = (module, SparseLinear(module))
    return out


def _input_shapes(model: nn.Module, names: Sequence[str], input_shape: Sequence[int] | None):
    """Per-sample input shape of each named layer, from one forward pass when known."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    if input_shape is not None:
        handles = [
            modules[n].register_forward_hook(
                lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:]))
            )
            for n in names
        ]
        device = next(model.parameters()).device
        try:
            with torch.inference_mode():
                model(torch.zeros(1, *input_shape, device=device))
        finally:
            for h in handles:
                h.remove()
    for n in names:
        if n not in shapes:
            m = modules[n]
            shapes[n] = (m.in_features,) if hasattr(m, "in_features") else (m.in_channels, 8, 8)
    return shapes


def _median_seconds(module: nn.Module, x: torch.Tensor) -> float:
    times = []
    with torch.inference_mode():
        for i in range(TIMING_WARMUP + TIMING_REPEATS):
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            module(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i >= TIMING_WARMUP:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _signature(module: nn.Module) -> str:
    if isinstance(module, PackedModule) and not isinstance(module, SparseLinear):
        return json.dumps([module.kind, module.config()])
    weight = module.weight_csr
    return json.dumps(["csr", list(weight.shape), round(weight.values().numel() / weight.shape.numel(), 2)])


def packed_is_faster(dense: nn.Module, packed: nn.Module, shape: tuple[int, ...]) -> bool:
    """True if ``packed`` is at least as fast as ``dense`` at every timing batch (cached)."""
    device = next(packed.parameters(), packed.weight_csr if isinstance(packed, SparseLinear) else None)
    device = device.device if device is not None else torch.device("cpu")
    key = (_signature(packed), shape, str(device), torch.get_num_threads())
    if key not in _decisions:
        faster = True
        for batch in TIMING_BATCHES:
            x = torch.randn(batch, *shape, device=device)
            faster &= _median_seconds(packed, x) <= _median_seconds(dense, x)
        _decisions[key] = faster
    return _decisions[key]


def select_runtime(
    model: nn.Module, runtime: str = "auto", input_shape: Sequence[int] | None = None
) -> nn.Module:
    """Put each compressed layer of ``model`` (in place) in the form ``runtime`` asks for.

    ``dense``: every packed layer as its plain equivalent; ``packed``: every layer that has a
    packed form in it; ``auto``: whichever form was measured faster on the model's device.
    Then permutations between consecutive packed MPD layers are folded.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: unknown {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    candidates = _candidates(model)
    shapes = _input_shapes(model, list(candidates), input_shape) if runtime == "auto" else {}
    for name, (dense, packed) in candidates.items():
        if runtime == "dense":
            keep_packed = False
        elif runtime == "packed":
            keep_packed = True
        else:
            keep_packed = packed_is_faster(dense, packed, shapes[name])
        model.set_submodule(name, packed if keep_packed else dense)
    fold_permutations(model)
    return model


def _permuted_batchnorm(bn: nn.BatchNorm2d, gather_out: torch.Tensor, width: int) -> nn.Module:
    """A copy of ``bn`` over ``width`` channels in an MPD layer's padded output order."""
    out = nn.BatchNorm2d(width, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out = out.to(bn.weight.device if bn.affine else gather_out.device).eval()
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, name, None)
            if source is not None:
                getattr(out, name)[gather_out] = source
    return out


def fold_permutations(model: nn.Module) -> int:
    """Merge output and input gathers of consecutive MPD layers in every ``nn.Sequential``.

    Between the two layers only channel-wise modules (activations, dropout, pooling, eval-mode
    BatchNorm, which is re-indexed) may appear. Returns the number of folds made.
    """
    folds = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        previous: tuple[str, _MPD] | None = None
        between: list[str] = []
        for name in names:
            module = seq._modules[name]
            if isinstance(module, _MPD):
                if (
                    previous is not None
                    and type(previous[1]) is type(module)
                    and previous[1].rows == module.cols
                    and not previous[1].skip_output_gather
                ):
                    prev = previous[1]
                    gather_out = prev.gathers()["gather_out"]
                    width = prev.nblocks * prev.mb
                    for b in between:
                        if isinstance(seq._modules[b], nn.BatchNorm2d):
                            seq._modules[b] = _permuted_batchnorm(seq._modules[b], gather_out, width)
                    prev.skip_output_gather = True
                    module.fold_input_gather(gather_out)
                    folds += 1
                previous, between = (name, module), []
            elif isinstance(module, _CHANNELWISE) or (
                isinstance(module, nn.BatchNorm2d) and not module.training
            ):
                between.append(name)
            else:
                previous, between = None, []
    return folds


def copy_with_runtime(model: nn.Module, runtime: str, input_shape: Sequence[int] | None = None):
    """A deep copy of ``model`` with :func:`select_runtime` applied (the input is untouched)."""
    return select_runtime(copy.deepcopy(model), runtime, input_shape)
