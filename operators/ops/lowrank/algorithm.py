"""Truncated SVD: the best rank-r factors of a matrix (Eckart-Young), and the rank that keeps
a given fraction of its energy (squared singular values)."""

from __future__ import annotations

import torch


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """The singular values of a 2-D ``matrix``, descending (float64)."""
    return torch.linalg.svdvals(matrix.detach().double())


def rank_for_energy(sigma: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` of ``sum(sigma**2)``."""
    power = sigma.double().pow(2)
    total = float(power.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(power, 0) / total
    return min(len(sigma), int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12)) + 1)


def low_rank_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``matrix`` (m x n):
    ``A = U_r sqrt(S_r)`` (m x r), ``B = sqrt(S_r) V_r^T`` (r x n), in ``matrix``'s dtype."""
    if not 1 <= rank <= min(matrix.shape):
        raise ValueError(f"rank: must be in [1, {min(matrix.shape)}], got {rank}")
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    a = u[:, :rank] * root
    b = root[:, None] * vh[:rank]
    return a.to(matrix.dtype), b.to(matrix.dtype)
