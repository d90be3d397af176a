"""Per-layer bits from a cheap sensitivity pre-pass (``cluster`` with ``allocate: sensitivity``).

Each selected layer alone is clustered at every width within :data:`SPREAD` bits of the
requested ``bits`` (1 to 8), the other layers as they are, and scored by the KL divergence of
the model's output distribution from the unclustered one's on the calibration inputs
(``cm.example_input``). :func:`allocate_bits` then spends the budget of
``bits`` per clustered value on average (a Lagrangian relaxation, then the leftover budget),
so the mean width (weighted by the values each layer clusters) never exceeds ``bits``. The
pre-pass and its cache are :mod:`operators.core.sensitivity`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from operators.core.model import CompressedModel
from operators.core.sensitivity import layer_curves
from operators.ops.cluster.algorithm import cluster_tensor, decode_cluster

SPREAD = 2


def widths(bits: int) -> list[int]:
    """The widths the pre-pass tries around ``bits``: ``bits - SPREAD .. bits + SPREAD`` in 1..8."""
    return list(range(max(1, bits - SPREAD), min(8, bits + SPREAD) + 1))


def bit_curves(
    cm: CompressedModel,
    layers: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]],
    bits: int,
    method: str,
) -> dict[str, dict[int, float]]:
    """``{weight name: {width: KL}}``: each ``(name, weight, mask)`` clustered alone
    (:func:`operators.core.sensitivity.layer_curves`)."""

    def variants(name: str, weight: torch.Tensor, mask: torch.Tensor | None):
        for width in widths(bits):
            codebook, indices = cluster_tensor(weight, width, method, mask)
            yield width, decode_cluster(codebook, indices, weight.shape, mask)

    return layer_curves(cm, "cluster", layers, (widths(bits), method), variants)


def _best_widths(curves: dict[str, dict[int, float]], sizes: dict[str, int], price: float):
    return {
        n: min(curve, key=lambda b: (curve[b] + price * sizes[n] * b, b))
        for n, curve in curves.items()
    }


def allocate_bits(
    curves: dict[str, dict[int, float]], sizes: dict[str, int], bits: int
) -> dict[str, int]:
    """Width per layer, mean (weighted by ``sizes``, the values each layer clusters) at most
    ``bits``, minimising the summed damage of the ``curves``: the Lagrangian relaxation (each
    layer's best width at a price per index bit, the price bisected to the cheapest that
    fits the budget), then the leftover budget spent on the widenings that fit, best first."""
    budget = bits * sum(sizes.values())

    def spent(chosen: dict[str, int]) -> int:
        return sum(sizes[n] * b for n, b in chosen.items())

    low, high = 0.0, 1.0
    while spent(_best_widths(curves, sizes, high)) > budget and high < 1e12:
        high *= 10
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if spent(_best_widths(curves, sizes, mid)) > budget else (low, mid)
    chosen = _best_widths(curves, sizes, high)
    if spent(chosen) > budget:  # no price fits (the narrowest widths exceed the budget)
        return {n: min(curve) for n, curve in curves.items()}
    while True:
        left = budget - spent(chosen)
        options = [
            (curves[n][b] - curves[n][w], n, w)
            for n, b in chosen.items()
            for w in curves[n]
            if w > b and sizes[n] * (w - b) <= left and curves[n][w] < curves[n][b]
        ]
        if not options:
            return chosen
        _, name, width = max(options)
        chosen[name] = width
