"""Weight clustering: DP-Net's exact 1-D k-means, Lloyd's k-means, and bit-packed indices.

The optimal clustering of a set of reals into ``k`` groups uses contiguous runs of the
sorted values, so it is a dynamic program over the sorted *unique* values with their
counts (weights)::

    D[j][i] = min_{t < i} D[j-1][t] + cost(t, i)      (first i unique values, j clusters)

with ``cost(t, i)`` the weighted sum of squared deviations of values ``t..i-1`` from their
mean, O(1) from prefix sums of ``w``, ``w*x`` and ``w*x^2`` (float64, on centred data). The
optimal split ``t`` is monotone in ``i``, so each layer ``j`` is solved by divide and conquer
in O(n log n); here every recursion level is one vectorised numpy pass, so the whole run is
about ``k * log2(n)`` passes over arrays of length ``n``. The result is exact on the unique
set, which is the whole input: nothing is binned.

:func:`optimal_kmeans_1d` is therefore the Euclidean projection onto "at most k distinct
values" (:func:`project_cluster`); :func:`cluster_tensor` gives the stored form (a codebook
and one index per value, only for the kept entries when a pruning mask is given), and
:func:`pack_indices` / :func:`unpack_indices` store ``bits``-bit indices densely in bytes.

Memory: the backtracking table holds ``k * n`` int32 (n unique values), e.g. 64 MiB for
k = 16 and n = 1M, 1 GiB for k = 256 and n = 1M.
"""

from __future__ import annotations

import numpy as np
import torch

from operators.format.codecs import check_bits

CLUSTER_METHODS = ("dp", "kmeans")
LLOYD_ITERATIONS = 50


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: must be an integer >= 1, got {k!r}")


def _unique_weighted(
    x: np.ndarray, weights: np.ndarray | torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique values, their total weights, and the inverse map of ``x`` into them."""
    uniq, inverse = np.unique(x, return_inverse=True)
    if weights is None:
        w = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    else:
        wx = _as_numpy(weights)
        if wx.shape != x.shape:
            raise ValueError(f"weights: shape {wx.shape} does not match values {x.shape}")
        if (wx <= 0).any() or not np.isfinite(wx).all():
            raise ValueError("weights: must be finite and > 0")
        w = np.bincount(inverse, weights=wx, minlength=len(uniq))
    return uniq, w, inverse.ravel()


class _SegmentCost:
    """O(1) weighted within-segment squared error from prefix sums (segments ``[t, i)``)."""

    def __init__(self, values: np.ndarray, weights: np.ndarray) -> None:
        centred = values - np.average(values, weights=weights)
        self.w = np.concatenate([[0.0], np.cumsum(weights)])
        self.s1 = np.concatenate([[0.0], np.cumsum(weights * centred)])
        self.s2 = np.concatenate([[0.0], np.cumsum(weights * centred * centred)])

    def __call__(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        s1 = self.s1[i] - self.s1[t]
        cost = self.s2[i] - self.s2[t] - s1 * s1 / (self.w[i] - self.w[t])
        return np.maximum(cost, 0.0)  # rounding can leave a tiny negative number


def _dp_layer(
    prev: np.ndarray, cost: _SegmentCost, j: int, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """One DP layer by vectorised divide and conquer: ``(D_j, argmin t)`` for ``i in [j, last]``.

    ``prev[t]`` is the optimum for the first ``t`` values in ``j - 1`` clusters (inf where
    impossible). Every recursion level handles all its sub-problems in one numpy pass; a
    sub-problem is a range of ``i`` with the range of candidate split points allowed by
    monotonicity, and the leftmost minimum is taken so that monotonicity holds under ties.
    The minimised quantity drops the terms constant in ``t`` (``s2[i]``), which are added back.
    """
    n = len(prev) - 1
    # Per candidate t: prev[t] - s2[t], s1[t], w[t], gathered together.
    by_t = np.stack([prev - cost.s2, cost.s1, cost.w], axis=1)
    best = np.full(n + 1, np.inf)
    arg = np.zeros(n + 1, dtype=np.int64)
    i_lo, i_hi = np.array([j]), np.array([last])
    t_lo, t_hi = np.array([j - 1]), np.array([last - 1])
    while len(i_lo):
        mid = (i_lo + i_hi) // 2
        lengths = np.minimum(t_hi, mid - 1) - t_lo + 1
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        t = np.arange(lengths.sum()) - np.repeat(starts - t_lo, lengths)
        a, s1, w = by_t[t].T
        ds1 = np.repeat(cost.s1[mid], lengths) - s1
        vals = a - ds1 * ds1 / (np.repeat(cost.w[mid], lengths) - w)
        mins = np.minimum.reduceat(vals, starts)
        first = np.flatnonzero(vals <= np.repeat(mins, lengths))
        t_best = t[first[np.searchsorted(first, starts)]]
        best[mid] = np.maximum(mins + cost.s2[mid], 0.0)
        arg[mid] = t_best
        left = i_lo <= mid - 1
        right = mid + 1 <= i_hi
        i_lo, i_hi, t_lo, t_hi = (
            np.concatenate([i_lo[left], mid[right] + 1]),
            np.concatenate([mid[left] - 1, i_hi[right]]),
            np.concatenate([t_lo[left], t_best[right]]),
            np.concatenate([t_best[left], t_hi[right]]),
        )
    return best, arg


def _optimal_boundaries(values: np.ndarray, weights: np.ndarray, k: int) -> list[int]:
    """Start indices of the ``k`` optimal contiguous clusters of sorted distinct ``values``."""
    n = len(values)
    cost = _SegmentCost(values, weights)
    idx = np.arange(1, n + 1)
    layer = np.concatenate([[np.inf], cost(np.zeros(n, dtype=np.int64), idx)])
    args = []
    for j in range(2, k + 1):
        # Layer j needs i in [j, n - (k - j)] only (the rest cannot lead to n in k clusters).
        layer, arg = _dp_layer(layer, cost, j, n - (k - j))
        args.append(arg.astype(np.int32))
    starts = [n]
    for arg in reversed(args):
        starts.append(int(arg[starts[-1]]))
    starts.append(0)
    return starts[::-1][:-1]


def optimal_kmeans_1d(
    values: np.ndarray | torch.Tensor,
    k: int,
    weights: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact weighted 1-D k-means: ``(centroids, assignment, sse)``.

    ``centroids`` (float64, ascending, ``min(k, #distinct values)`` of them) are the cluster
    means; ``assignment[i]`` is the cluster of ``values[i]`` (flattened); ``sse`` is
    ``sum(weights * (values - centroids[assignment])**2)``, the global minimum.
    """
    _check_k(k)
    x = _as_numpy(values)
    if x.size == 0:
        raise ValueError("values: must not be empty")
    if not np.isfinite(x).all():
        raise ValueError("values: must be finite")
    uniq, w, inverse = _unique_weighted(x, weights)
    k = min(k, len(uniq))
    starts = _optimal_boundaries(uniq, w, k)
    labels = np.zeros(len(uniq), dtype=np.int64)
    labels[starts[1:]] = 1
    labels = np.cumsum(labels)
    sums = np.bincount(labels, weights=w * uniq, minlength=k)
    centroids = sums / np.bincount(labels, weights=w, minlength=k)
    sse = float(np.sum(w * (uniq - centroids[labels]) ** 2))
    return centroids, labels[inverse], sse


def lloyd_kmeans_1d(
    values: np.ndarray | torch.Tensor,
    k: int,
    iters: int = LLOYD_ITERATIONS,
    seed: int = 0,
    weights: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted Lloyd's k-means in 1-D from a k-means++ start; same outputs as the DP.

    A local optimum only (for comparison with :func:`optimal_kmeans_1d`); empty clusters
    are dropped, so fewer than ``k`` centroids may come back.
    """
    _check_k(k)
    x = _as_numpy(values)
    uniq, w, inverse = _unique_weighted(x, weights)
    k = min(k, len(uniq))
    rng = np.random.default_rng(seed)
    centroids = [uniq[rng.choice(len(uniq), p=w / w.sum())]]
    for _ in range(1, k):
        d2 = np.min((uniq[:, None] - np.array(centroids)[None, :]) ** 2, axis=1) * w
        if d2.sum() == 0:
            break
        centroids.append(uniq[rng.choice(len(uniq), p=d2 / d2.sum())])
    c = np.sort(np.array(centroids))
    for _ in range(iters):
        labels = np.searchsorted((c[1:] + c[:-1]) / 2, uniq)
        counts = np.bincount(labels, weights=w, minlength=len(c))
        used = counts > 0
        new = np.bincount(labels, weights=w * uniq, minlength=len(c))[used] / counts[used]
        if len(new) == len(c) and np.array_equal(new, c):
            break
        c = new
    labels = np.searchsorted((c[1:] + c[:-1]) / 2, uniq)
    sse = float(np.sum(w * (uniq - c[labels]) ** 2))
    return c, labels[inverse], sse


def cluster_tensor(
    w: torch.Tensor, bits: int, method: str = "dp", mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``w`` into at most ``2**bits`` values: ``(codebook, indices)``.

    ``codebook`` is float32, ascending; ``indices`` is a flat uint8 tensor, one entry per
    value of ``w`` in row-major order, or, when ``mask`` (True = kept) is given, one per
    kept entry only: pruned entries are not clustered, stay zero and are encoded by the mask.
    ``method`` is ``"dp"`` (exact, :func:`optimal_kmeans_1d`) or ``"kmeans"`` (Lloyd).
    """
    check_bits(bits)
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method: must be one of {', '.join(CLUSTER_METHODS)}; got {method!r}")
    flat = w.detach().reshape(-1)
    if mask is not None:
        if mask.shape != w.shape:
            raise ValueError(f"mask: shape {tuple(mask.shape)} does not match {tuple(w.shape)}")
        flat = flat[mask.reshape(-1).to(flat.device)]
    if flat.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.uint8)
    solve = optimal_kmeans_1d if method == "dp" else lloyd_kmeans_1d
    centroids, assignment, _ = solve(flat, 2**bits)
    return (
        torch.from_numpy(centroids).float(),
        torch.from_numpy(assignment.astype(np.uint8)),
    )


def decode_cluster(
    codebook: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense tensor of ``shape`` that :func:`cluster_tensor` encoded (zeros off ``mask``)."""
    values = codebook[indices.long()]
    if mask is None:
        return values.reshape(shape)
    out = torch.zeros(int(np.prod(shape)), dtype=codebook.dtype)
    out[mask.reshape(-1).cpu()] = values
    return out.reshape(shape)


def project_cluster(w: torch.Tensor, bits: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of ``w`` onto "at most ``2**bits`` distinct values" (exact).

    With ``mask``, onto "zero off the mask, at most ``2**bits`` distinct values on it".
    Returned in ``w``'s dtype and device.
    """
    codebook, indices = cluster_tensor(w, bits, "dp", mask)
    dense = decode_cluster(codebook.double(), indices, w.shape, None if mask is None else mask)
    return dense.to(dtype=w.dtype, device=w.device)
