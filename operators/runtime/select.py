"""Choosing, per layer, per device and per batch size, whether a compressed layer runs packed
or dense.

"Measure, do not assume": for every layer that has a packed form (an MPD layer, or a Linear
whose weight is mostly zeros and could run as CSR), :func:`select_runtime` times the packed
form against its plain equivalent on the device, with the layer's real input shape, at each
of :data:`TIMING_BATCHES`; the packed form wins at a batch only if it is faster by a margin
(:data:`PACKED_MARGIN`: a near tie is not worth the dispatch). A layer whose packed form wins
at every timed batch keeps only the packed form, one that never wins only the dense form, and
any other becomes a :class:`BatchDispatch` holding both and running, for an input of batch
``b``, the form that won at the timed batch nearest ``b`` (in log scale). Decisions are cached
in-process per (form, shape, device, threads), so loading the same architecture again costs
no timing. Afterwards :func:`fold_permutations` merges an MPD layer's output gather into the
next MPD layer's input gather where both run packed at every batch and only channel-wise
modules lie between them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from operators.core.registry import PackedModule
from operators.runtime.sparse import SparseLinear

RUNTIMES = ("auto", "dense", "packed")
SPARSE_DENSITY = 0.5  # a Linear with at most this fraction of nonzeros gets a CSR candidate
TIMING_BATCHES = (1, 16, 256)
TIMING_WARMUP, TIMING_REPEATS = 1, 7
TIMING_BUDGET_S = 0.5  # per layer, form and batch: large batches get fewer repeats (>= 2)
PACKED_MARGIN = 0.95  # packed must take at most this fraction of dense's time: ties stay dense
Decide = Callable[[nn.Module, nn.Module, tuple[int, ...]], Sequence[bool]]
_decisions: dict[tuple, tuple[bool, ...]] = {}
_dispatch_cost: list[float] = []  # seconds a BatchDispatch adds to a call, measured once
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Identity, nn.MaxPool2d,
                nn.AvgPool2d)  # fmt: skip


def bucket_limits(batches: Sequence[int] = TIMING_BATCHES) -> list[float]:
    """Upper batch limits of the buckets of ``batches``: the geometric means of neighbours."""
    return [math.sqrt(a * b) for a, b in zip(batches, batches[1:], strict=False)] + [math.inf]


def batch_bucket(batch: int, batches: Sequence[int] = TIMING_BATCHES) -> int:
    """Index of the timed batch size nearest ``batch`` in log scale (ties go to the smaller)."""
    return next(i for i, limit in enumerate(bucket_limits(batches)) if batch <= limit)


class BatchDispatch(nn.Module):
    """Two equivalent forms of one layer, run by batch size: ``packed`` where it was measured
    faster (``packed_wins[i]`` for batches nearest ``batches[i]``), ``dense`` elsewhere."""

    def __init__(
        self,
        dense: nn.Module,
        packed: nn.Module,
        packed_wins: Sequence[bool],
        batches: Sequence[int] = TIMING_BATCHES,
    ) -> None:
        super().__init__()
        if len(packed_wins) != len(batches):
            raise ValueError(f"packed_wins: need one flag per batch in {tuple(batches)}")
        self.dense, self.packed = dense, packed
        self.packed_wins, self.batches = tuple(bool(w) for w in packed_wins), tuple(batches)
        # (upper batch limit, form) per bucket: forward costs one comparison per bucket
        self._table = [
            (limit, packed if wins else dense)
            for limit, wins in zip(bucket_limits(self.batches), self.packed_wins, strict=True)
        ]

    def choose(self, batch: int) -> nn.Module:
        """The form that runs an input of ``batch`` samples."""
        for limit, form in self._table:
            if batch <= limit:
                return form
        return self.dense  # unreachable: the last limit is infinite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choose(x.shape[0])(x)

    @property
    def weight(self) -> torch.Tensor:
        """The dense form's weight, for model code that reads a layer's ``.weight``."""
        return self.dense.weight

    def extra_repr(self) -> str:
        wins = [b for b, w in zip(self.batches, self.packed_wins, strict=True) if w]
        return f"packed at batches {wins}"


def dispatch(dense: nn.Module, packed: nn.Module, packed_wins: Sequence[bool]) -> nn.Module:
    """``packed`` if it wins everywhere, ``dense`` if nowhere, else a :class:`BatchDispatch`."""
    if all(packed_wins):
        return packed
    if not any(packed_wins):
        return dense
    return BatchDispatch(dense, packed, packed_wins)


def stored_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters, each layer counted once (a :class:`BatchDispatch` by its
    packed form: the dense one is a runtime copy)."""
    copies = {
        id(p)
        for m in model.modules()
        if isinstance(m, BatchDispatch)
        for p in m.dense.parameters()
    }
    return [p for p in model.parameters() if id(p) not in copies]


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


def _input_shapes(
    model: nn.Module,
    dense_forms: dict[str, nn.Module],
    input_shape: Sequence[int] | None,
) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of each named layer, from one forward pass when known."""
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    if input_shape is not None:
        handles = [
            modules[n].register_forward_hook(
                lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:]))
            )
            for n in dense_forms
        ]
        device = next(model.parameters()).device
        try:
            with torch.inference_mode():
                model(torch.zeros(1, *input_shape, device=device))
        finally:
            for h in handles:
                h.remove()
    for n, m in dense_forms.items():
        if n not in shapes:
            shapes[n] = (m.in_features,) if hasattr(m, "in_features") else (m.in_channels, 8, 8)
    return shapes


def _time_pair(dense: nn.Module, packed: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Fastest seconds of ``dense`` and ``packed`` on ``x``, timed alternately (the minimum is
    the least disturbed by other processes sharing the cores)."""

    def once(module: nn.Module) -> float:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        module(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    with torch.inference_mode():
        first = [once(m) for m in (dense, packed) for _ in range(TIMING_WARMUP)]
        repeats = max(2, min(TIMING_REPEATS, int(TIMING_BUDGET_S / max(first[-1], first[0], 1e-6))))
        times = [(once(dense), once(packed)) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def _signature(module: nn.Module) -> str:
    if isinstance(module, PackedModule) and not isinstance(module, SparseLinear):
        return json.dumps([module.kind, module.config()])
    weight = module.weight_csr
    return json.dumps(["csr", list(weight.shape), round(weight.values().numel() / weight.shape.numel(), 2)])


def _device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None and isinstance(module, SparseLinear):
        tensor = module.weight_csr
    return torch.device("cpu") if tensor is None else tensor.device


def packed_wins(dense: nn.Module, packed: nn.Module, shape: tuple[int, ...]) -> tuple[bool, ...]:
    """Per batch of :data:`TIMING_BATCHES`: is ``packed`` faster than ``dense`` by at least the
    :data:`PACKED_MARGIN` (cached)? A near tie keeps the plain layer; so does a layer whose
    forms each win somewhere when the dispatch between them would cost more than the margin
    of the dense form's time (tiny layers at batch 1)."""
    device = _device(packed)
    key = (_signature(packed), shape, str(device), torch.get_num_threads(), TIMING_BATCHES)
    if key not in _decisions:
        times = [
            _time_pair(dense, packed, torch.randn(batch, *shape, device=device))
            for batch in TIMING_BATCHES
        ]
        wins = tuple(packed_s <= PACKED_MARGIN * dense_s for dense_s, packed_s in times)
        if any(wins) and not all(wins):  # both forms would be kept: every call pays a dispatch
            margin = (1 - PACKED_MARGIN) * min(d for (d, _), w in zip(times, wins, strict=True) if not w)
            if dispatch_cost() > margin:  # where dense wins, the dispatch would cost too much
                wins = (False,) * len(wins)
        _decisions[key] = wins
    return _decisions[key]


def dispatch_cost() -> float:
    """Seconds a :class:`BatchDispatch` adds to one call (measured once per process)."""
    if not _dispatch_cost:
        plain = nn.Identity()
        wrapped = BatchDispatch(plain, plain, (False,) * len(TIMING_BATCHES))
        x = torch.zeros(1)

        def best(module: nn.Module) -> float:
            runs = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(200):
                    module(x)
                runs.append((time.perf_counter() - start) / 200)
            return min(runs)

        with torch.inference_mode():
            _dispatch_cost.append(max(0.0, best(wrapped) - best(plain)))
    return _dispatch_cost[0]


def select_runtime(
    model: nn.Module,
    runtime: str = "auto",
    input_shape: Sequence[int] | None = None,
    *,
    decide: Decide = packed_wins,
) -> nn.Module:
    """Put each compressed layer of ``model`` (in place) in the form ``runtime`` asks for.

    ``dense``: every packed layer as its plain equivalent; ``packed``: every layer that has a
    packed form in it; ``auto``: per layer and batch size whichever form
    ``decide(dense, packed, input_shape)`` says wins at each of :data:`TIMING_BATCHES` (by
    default measured on the model's device, see the module docstring; tests inject a fixed
    table). Then permutations between consecutive packed MPD layers are folded.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: unknown {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    candidates = _candidates(model)
    if runtime == "auto":
        shapes = _input_shapes(model, {n: d for n, (d, _) in candidates.items()}, input_shape)
    for name, (dense, packed) in candidates.items():
        if runtime == "dense":
            form = dense
        elif runtime == "packed":
            form = packed
        else:
            form = dispatch(dense, packed, decide(dense, packed, shapes[name]))
        model.set_submodule(name, form)
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
    """Merge output and input gathers of consecutive MPD layers in every ``nn.Sequential``
    (layers that run packed at every batch: a :class:`BatchDispatch` is not folded).

    Between the two layers only channel-wise modules (activations, dropout, pooling, eval-mode
    BatchNorm, which is re-indexed) may appear. Returns the number of folds made.
    """
    folds = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        previous: tuple[str, PackedModule] | None = None
        between: list[str] = []
        for name in names:
            module = seq._modules[name]
            if isinstance(module, PackedModule) and module.FOLDABLE:
                if (
                    previous is not None
                    and type(previous[1]) is type(module)
                    and previous[1].rows == module.cols
                    and not previous[1].skip_output_gather
                ):
                    prev = previous[1]
                    gather_out = prev.gathers()["gather_out"]
                    width = prev.padded_rows
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
