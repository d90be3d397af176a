"""DP-Net clustering: exact against brute force, never worse than Lloyd, masks and projection."""

import itertools

import numpy as np
import pytest
import torch

from operators.ops.cluster.algorithm import (
    cluster_tensor,
    decode_cluster,
    lloyd_kmeans_1d,
    optimal_kmeans_1d,
    project_cluster,
)


def brute_force_partitions(x: np.ndarray, k: int) -> float:
    """Least SSE over all contiguous partitions of sorted ``x`` into at most ``k`` runs."""
    x = np.sort(x)
    best = np.inf
    for parts in range(1, min(k, len(x)) + 1):
        for cuts in itertools.combinations(range(1, len(x)), parts - 1):
            runs = np.split(x, cuts)
            best = min(best, sum(float(((r - r.mean()) ** 2).sum()) for r in runs))
    return best


def brute_force_labelings(x: np.ndarray, k: int) -> float:
    best = np.inf
    for labels in itertools.product(range(k), repeat=len(x)):
        labels = np.array(labels)
        sse = sum(((x[labels == c] - x[labels == c].mean()) ** 2).sum() for c in set(labels))
        best = min(best, sse)
    return best


def naive_dp(values: np.ndarray, weights: np.ndarray, k: int) -> float:
    """The O(k n^2) weighted DP, as the reference for the divide-and-conquer version."""
    n = len(values)
    w = np.concatenate([[0], np.cumsum(weights)])
    s1 = np.concatenate([[0], np.cumsum(weights * values)])
    s2 = np.concatenate([[0], np.cumsum(weights * values**2)])

    def cost(t, i):
        return s2[i] - s2[t] - (s1[i] - s1[t]) ** 2 / (w[i] - w[t])

    d = np.array([np.inf] + [cost(0, i) for i in range(1, n + 1)])
    for _ in range(2, k + 1):
        d = np.array([np.inf] + [min(d[t] + cost(t, i) for t in range(i)) for i in range(1, n + 1)])
    return float(d[n])


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force_over_contiguous_partitions(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rng.integers(2, 12))
    for k in range(1, 5):
        _, _, sse = optimal_kmeans_1d(x, k)
        assert sse == pytest.approx(brute_force_partitions(x, k), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_dp_equals_brute_force_over_all_labelings(seed):
    x = np.random.default_rng(seed).standard_normal(7)
    for k in (2, 3):
        assert optimal_kmeans_1d(x, k)[2] == pytest.approx(brute_force_labelings(x, k), rel=1e-9)


def test_divide_and_conquer_equals_naive_dp_with_duplicates_and_weights():
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal(400), 2)  # many duplicates
    weights = rng.uniform(0.5, 2.0, size=400)
    uniq, inverse = np.unique(x, return_inverse=True)
    w = np.bincount(inverse, weights=weights)
    for k in (2, 5, 9):
        _, _, sse = optimal_kmeans_1d(x, k, weights=weights)
        assert sse == pytest.approx(naive_dp(uniq, w, k), rel=1e-9)


def test_outputs_are_consistent():
    x = np.random.default_rng(2).standard_normal(1000)
    centroids, assignment, sse = optimal_kmeans_1d(torch.from_numpy(x), 8)
    assert len(centroids) == 8 and np.all(np.diff(centroids) > 0)
    assert sse == pytest.approx(float(((x - centroids[assignment]) ** 2).sum()))
    for c in range(8):  # centroids are their cluster means
        assert centroids[c] == pytest.approx(x[assignment == c].mean())


def test_k_at_least_distinct_values_gives_zero_error():
    x = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
    centroids, assignment, sse = optimal_kmeans_1d(x, 5)
    assert sse == 0 and list(centroids) == [1.0, 2.0, 3.0]
    assert np.array_equal(centroids[assignment], x)


@pytest.mark.parametrize("seed", range(20))
def test_dp_never_worse_than_lloyd(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(300) * rng.uniform(0.1, 3) + rng.standard_t(2, 300)
    for k in (2, 4, 16):
        dp = optimal_kmeans_1d(x, k)[2]
        lloyd = min(lloyd_kmeans_1d(x, k, seed=s)[2] for s in range(5))
        assert dp <= lloyd * (1 + 1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        optimal_kmeans_1d(np.ones(3), 0)
    with pytest.raises(ValueError, match="bits"):
        cluster_tensor(torch.ones(3), 9)
    with pytest.raises(ValueError, match="method"):
        cluster_tensor(torch.ones(3), 2, method="median")


@pytest.mark.parametrize("method", ["dp", "kmeans"])
def test_cluster_tensor_under_mask_keeps_zeros_and_bits(method):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 30, generator=g)
    mask = torch.rand(40, 30, generator=g) > 0.7
    codebook, indices = cluster_tensor(w, 3, method, mask)
    assert indices.numel() == int(mask.sum()) and codebook.numel() <= 8
    dense = decode_cluster(codebook, indices, w.shape, mask)
    assert torch.all(dense[~mask] == 0)
    assert torch.unique(dense[mask]).numel() <= 8
    assert (dense[mask] - w[mask]).abs().max() < (w[mask].max() - w[mask].min()) / 4


def test_project_cluster_is_the_optimal_projection():
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    projected = project_cluster(w, 2)
    assert projected.dtype == w.dtype and projected.shape == w.shape
    assert torch.unique(projected).numel() <= 4
    _, _, sse = optimal_kmeans_1d(w, 4)
    assert float(((projected - w) ** 2).sum()) == pytest.approx(sse)
    assert torch.equal(project_cluster(projected, 2), projected)  # idempotent
