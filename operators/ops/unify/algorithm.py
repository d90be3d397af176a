"""Micro-structured weight unification and pruning: exact projection, packing, retraining.

The weight is viewed as a matrix (conv: ``(C_out, C_in*k*k)``) cut into blocks of
``block = (rows, cols)`` (edge blocks may be smaller). Each block is *kept* (dense),
*unified* (``w_i = a_b * s_i`` with signs ``s_i = ±1`` and one magnitude ``a_b >= 0``) or
*pruned* (zero). Projecting a block costs

- unify: ``U_b = sum (|w_i| - mean|w|)^2`` (optimal ``a_b = mean|w_i|``, signs kept; a zero
  weight gets sign +1);
- prune: ``P_b = sum w_i^2``;  keep: 0.

:func:`project_unify` picks exactly ``round(unify_ratio*B)`` unified and
``round(prune_ratio*B)`` pruned blocks of minimum total cost, exactly: by an exchange
argument some optimum prunes only blocks whose ``d_b = P_b - U_b`` is no larger than any
unified block's, so after sorting by ``d`` it is, for the best split point ``t``, the
cheapest prunes (by ``P``) among the first ``t`` blocks plus the cheapest unifications (by
``U``) among the rest; running heaps give every split in O(B log B).

:func:`pack_unified` stores 2-bit block states, one sign bit per unified weight, one scale
per unified block and the kept blocks' values; :class:`UnifiedParametrization` and
:func:`enforce_unified` hold the pattern during retraining (unified blocks as ``a_b * S_b``).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from operators.format.codecs import pack_indices, unpack_indices

KEEP, UNIFY, PRUNE = 0, 1, 2


@dataclass
class UnifyState:
    """Per-block decision of a unification: ``states`` (B,) uint8 in KEEP/UNIFY/PRUNE,
    ``scales`` (B,) float32 (``a_b`` of unified blocks, 0 elsewhere), the weight's shape and
    the block shape. Blocks are numbered row-major over the block grid."""

    shape: tuple[int, ...]
    block: tuple[int, int]
    states: torch.Tensor
    scales: torch.Tensor

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D view the blocks tile: ``(shape[0], prod(shape[1:]))``."""
        return self.shape[0], math.prod(self.shape[1:])

    @property
    def grid(self) -> tuple[int, int]:
        """Blocks along rows and along columns."""
        (m, n), (r, c) = self.matrix_shape, self.block
        return -(-m // r), -(-n // c)

    def element_states(self) -> torch.Tensor:
        """The state of every weight, shaped like the 2-D view."""
        return self._expand(self.states)

    def element_scales(self) -> torch.Tensor:
        """Each weight's block scale, shaped like the 2-D view."""
        return self._expand(self.scales)

    def _expand(self, per_block: torch.Tensor) -> torch.Tensor:
        (m, n), (r, c) = self.matrix_shape, self.block
        grid = per_block.reshape(self.grid)
        return grid.repeat_interleave(r, 0).repeat_interleave(c, 1)[:m, :n]


def check_block(block: Any) -> tuple[int, int]:
    """``block`` as ``(rows, cols)``; ValueError unless it is two integers >= 1."""
    if (
        not isinstance(block, (list, tuple))
        or len(block) != 2
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in block)
    ):
        raise ValueError(f"block: must be two integers >= 1 [rows, cols], got {block!r}")
    return int(block[0]), int(block[1])


def block_costs(w: torch.Tensor, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(U_b, P_b)`` per block (float64, row-major over the block grid)."""
    r, c = check_block(block)
    mat = w.detach().reshape(w.shape[0], -1).double().cpu()
    m, n = mat.shape
    padded = torch.zeros(-(-m // r) * r, -(-n // c) * c, dtype=torch.float64)
    padded[:m, :n] = mat
    counts = torch.zeros_like(padded)
    counts[:m, :n] = 1

    def per_block(t: torch.Tensor) -> torch.Tensor:
        gr, gc = padded.shape[0] // r, padded.shape[1] // c
        return t.reshape(gr, r, gc, c).sum(dim=(1, 3)).reshape(-1)

    s1, s2, cnt = per_block(padded.abs()), per_block(padded**2), per_block(counts)
    unify = (s2 - s1**2 / cnt).clamp_min(0)
    return unify.numpy(), s2.numpy()


def _best_split_assignment(
    unify: np.ndarray, prune: np.ndarray, n_unify: int, n_prune: int
) -> np.ndarray:
    """States minimising total cost with exactly ``n_unify`` unified, ``n_prune`` pruned."""
    order = np.argsort(prune - unify, kind="stable")
    b = len(order)

    def cheapest_sums(costs: np.ndarray, size: int) -> np.ndarray:
        """sums[t] = sum of the ``size`` smallest of costs[:t] (inf if t < size)."""
        sums = np.full(len(costs) + 1, np.inf)
        if size == 0:
            sums[:] = 0.0
            return sums
        heap: list[float] = []  # max-heap (negated) of the current ``size`` smallest
        total = 0.0
        for t, cost in enumerate(costs, start=1):
            if len(heap) < size:
                heapq.heappush(heap, -cost)
                total += cost
            elif cost < -heap[0]:
                total += cost + heapq.heapreplace(heap, -cost)
            if len(heap) == size:
                sums[t] = total
        return sums

    prune_prefix = cheapest_sums(prune[order], n_prune)
    unify_suffix = cheapest_sums(unify[order][::-1], n_unify)[::-1]
    split = int(np.argmin(prune_prefix + unify_suffix))
    states = np.full(b, KEEP, dtype=np.uint8)
    head, tail = order[:split], order[split:]
    states[head[np.argsort(prune[head], kind="stable")[:n_prune]]] = PRUNE
    states[tail[np.argsort(unify[tail], kind="stable")[:n_unify]]] = UNIFY
    return states


def project_unify(
    w: torch.Tensor, block: tuple[int, int], unify_ratio: float, prune_ratio: float = 0.0
) -> tuple[torch.Tensor, UnifyState]:
    """Euclidean projection onto "``round(unify_ratio*B)`` blocks unified and
    ``round(prune_ratio*B)`` pruned" (B blocks): ``(w_projected, state)``, exact."""
    if not (0 <= unify_ratio <= 1 and 0 <= prune_ratio <= 1 and unify_ratio + prune_ratio <= 1):
        raise ValueError(
            f"unify_ratio, prune_ratio: must be in [0, 1] with sum <= 1, "
            f"got {unify_ratio!r}, {prune_ratio!r}"
        )
    unify, prune = block_costs(w, block)
    n_blocks = len(unify)
    n_prune = round(prune_ratio * n_blocks)
    n_unify = min(round(unify_ratio * n_blocks), n_blocks - n_prune)
    states = _best_split_assignment(unify, prune, n_unify, n_prune)
    state = UnifyState(
        shape=tuple(w.shape),
        block=check_block(block),
        states=torch.from_numpy(states),
        scales=torch.zeros(n_blocks, dtype=torch.float32),
    )
    return _apply_state(w, state, fit_scales=True), state


def _block_means(values: torch.Tensor, state: UnifyState) -> torch.Tensor:
    """Mean of ``values`` (2-D view) over each block, counting only real (unpadded) entries."""
    (m, n), (r, c) = state.matrix_shape, state.block
    gr, gc = state.grid
    padded = values.new_zeros(gr * r, gc * c)
    padded[:m, :n] = values
    counts = values.new_zeros(gr * r, gc * c)
    counts[:m, :n] = 1
    total = padded.reshape(gr, r, gc, c).sum(dim=(1, 3))
    return (total / counts.reshape(gr, r, gc, c).sum(dim=(1, 3))).reshape(-1)


def _signs(mat: torch.Tensor) -> torch.Tensor:
    return torch.where(mat >= 0, 1.0, -1.0).to(mat.dtype)


def _apply_state(w: torch.Tensor, state: UnifyState, fit_scales: bool) -> torch.Tensor:
    """``w`` with ``state``'s pattern: signs from ``w``; scales refit (and stored) if asked."""
    mat = w.detach().reshape(w.shape[0], -1)
    if fit_scales:
        means = _block_means(mat.abs().double().cpu(), state).float()
        state.scales = torch.where(state.states == UNIFY, means, torch.zeros_like(means))
    elem_state = state.element_states().to(mat.device)
    unified = _signs(mat) * state.element_scales().to(mat)
    out = torch.where(elem_state == UNIFY, unified, mat)
    out = torch.where(elem_state == PRUNE, torch.zeros_like(mat), out)
    return out.reshape(w.shape)


def enforce_unified(w: torch.Tensor, state: UnifyState) -> torch.Tensor:
    """Projection onto ``state``'s fixed pattern (for masked retraining after each step).

    Pruned blocks zero; unified blocks ``a_b * s_b`` with ``a_b = max(0, mean(s_i w_i))``
    (signs ``s`` taken from the current weights, which retraining does not flip); kept blocks
    unchanged. Updates ``state.scales``.
    """
    mat = w.detach().reshape(w.shape[0], -1)
    signs = _signs(mat)
    means = _block_means((signs * mat).double().cpu(), state).clamp_min(0).float()
    state.scales = torch.where(state.states == UNIFY, means, torch.zeros_like(means))
    return _apply_state(w, state, fit_scales=False)


class UnifiedParametrization(nn.Module):
    """``torch.nn.utils.parametrize`` map holding a unification pattern during retraining.

    ``W = keep * X + unified * S * a(X)`` with ``a_b = mean_b(S * X)``, signs ``S`` fixed at
    construction, pruned blocks 0. Gradients: kept weights get ``dL/dW``; a unified block's
    weights all get ``S_i / n_b * sum_j S_j dL/dW_j``, i.e. the block's scale ``a_b`` moves
    by ``sum_j S_j dL/dW_j`` (times ``1/n_b``); pruned weights get none. Usage::

        parametrize.register_parametrization(layer, "weight", UnifiedParametrization(state, w))
    """

    def __init__(self, state: UnifyState, w: torch.Tensor) -> None:
        super().__init__()
        self.state = state
        mat = w.detach().reshape(w.shape[0], -1)
        self.register_buffer("signs", _signs(mat).float())
        self.register_buffer("element_state", state.element_states())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mat = x.reshape(x.shape[0], -1)
        scales = _block_means(self.signs.to(mat) * mat, self.state)
        grid_scales = UnifyState(self.state.shape, self.state.block, self.state.states, scales)
        unified = self.signs.to(mat) * grid_scales.element_scales()
        out = torch.where(self.element_state == UNIFY, unified, mat)
        out = torch.where(self.element_state == PRUNE, torch.zeros_like(mat), out)
        return out.reshape(x.shape)


def pack_unified(
    w: torch.Tensor, state: UnifyState, scale_dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """Compact tensors for ``w`` under ``state``.

    ``states``: the 2-bit block states, bit-packed; ``signs``: one bit per weight of the
    unified blocks (1 = negative), bit-packed, in row-major order of the 2-D view;
    ``scales``: one ``scale_dtype`` value per unified block; ``values``: the kept blocks' weights (dtype of
    ``w``), in row-major order. Pruned blocks store nothing.
    """
    mat = w.detach().reshape(w.shape[0], -1).cpu()
    elem_state = state.element_states()
    negative = (mat[elem_state == UNIFY] < 0).to(torch.uint8)
    return {
        "states": pack_indices(state.states, 2),
        "signs": pack_indices(negative, 1),
        "scales": state.scales[state.states == UNIFY].to(scale_dtype),
        "values": mat[elem_state == KEEP].clone(),
    }


def unpack_unified(
    packed: dict[str, torch.Tensor], shape: tuple[int, ...], block: tuple[int, int]
) -> torch.Tensor:
    """The dense weight of ``shape`` that :func:`pack_unified` stored (float32 or values' dtype)."""
    state = UnifyState(tuple(shape), check_block(block), torch.zeros(0), torch.zeros(0))
    gr, gc = state.grid
    state.states = unpack_indices(packed["states"], 2, gr * gc).to(torch.uint8)
    state.scales = torch.zeros(gr * gc, dtype=torch.float32)
    state.scales[state.states == UNIFY] = packed["scales"].float()
    elem_state = state.element_states()
    n_signs = int((elem_state == UNIFY).sum())
    negative = unpack_indices(packed["signs"], 1, n_signs).bool()
    dtype = packed["values"].dtype if packed["values"].is_floating_point() else torch.float32
    mat = torch.zeros(state.matrix_shape, dtype=dtype)
    mat[elem_state == KEEP] = packed["values"].to(dtype)
    signs = torch.where(negative, -1.0, 1.0).to(dtype)
    mat[elem_state == UNIFY] = signs * state.element_scales().to(dtype)[elem_state == UNIFY]
    return mat.reshape(shape)
