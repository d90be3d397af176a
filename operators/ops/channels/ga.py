"""Genetic channel selection (Hu et al. 2018) with a two-step fitness, and its helpers.

A chromosome is the set of ``keep`` channels a layer keeps; crossover (uniform on the
parents' symmetric difference) and mutation (swap a kept channel for a dropped one) both
preserve the count, so every chromosome keeps exactly ``keep`` channels. Fitness is an
*error to minimise*, in two steps: ``cheap_fitness`` (e.g. :class:`ReconstructionFitness`)
for the whole population, then ``expensive_fitness`` (e.g. the network loss on a held-out
minibatch) for the ``top_k`` best by the cheap one; the elite and the answer are chosen by
the expensive score where it exists.

:func:`layer_sensitivity_order` ranks layers by how much pruning each one alone (by filter
L1 norm) hurts a metric, so layers can be pruned one by one, most robust first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Fitness = Callable[[list[int]], float]


def _crossover(a: frozenset[int], b: frozenset[int], rng: np.random.Generator) -> frozenset[int]:
    """Keep the parents' common channels, fill up from the rest of their union at random."""
    common = a & b
    others = np.array(sorted((a | b) - common), dtype=np.int64)
    fill = rng.choice(others, size=len(a) - len(common), replace=False) if len(others) else []
    return frozenset(common | {int(c) for c in fill})


def _mutate(
    chromosome: frozenset[int], n_channels: int, rate: float, rng: np.random.Generator
) -> frozenset[int]:
    """Swap kept channels for dropped ones, each kept channel with probability ``rate``."""
    kept = set(chromosome)
    if len(kept) in (0, n_channels):
        return chromosome
    for c in sorted(chromosome):
        if rng.random() < rate:
            dropped = np.array(sorted(set(range(n_channels)) - kept))
            kept.remove(c)
            kept.add(int(rng.choice(dropped)))
    return frozenset(kept)


def select_channels_ga(
    n_channels: int,
    keep: int,
    cheap_fitness: Fitness,
    expensive_fitness: Fitness | None = None,
    top_k: int = 3,
    population: int = 32,
    generations: int = 40,
    seed: int = 0,
    mutation_rate: float | None = None,
    tournament: int = 3,
    initial: Sequence[Sequence[int]] = (),
) -> list[int]:
    """The ``keep`` channels (sorted) of ``n_channels`` with the lowest error.

    Fitness functions take a sorted list of channel indices and return an error (lower is
    better); results are cached per set. ``initial`` seeds the population (e.g. the
    L1-norm top-``keep``); the rest is drawn uniformly. Each generation: tournament
    selection on the cheap error, count-preserving crossover and mutation (default rate
    ``1/keep``), and elitism: the best chromosome so far and the best tenth by cheap error
    survive unchanged.
    """
    if not 0 < keep <= n_channels:
        raise ValueError(f"keep: must be in [1, {n_channels}], got {keep}")
    if population < 2 or generations < 0 or top_k < 1:
        raise ValueError("population >= 2, generations >= 0 and top_k >= 1 required")
    rng = np.random.default_rng(seed)
    rate = 1 / keep if mutation_rate is None else mutation_rate
    cheap: dict[frozenset[int], float] = {}
    expensive: dict[frozenset[int], float] = {}

    def cheap_of(c: frozenset[int]) -> float:
        if c not in cheap:
            cheap[c] = float(cheap_fitness(sorted(c)))
        return cheap[c]

    def rank_key(c: frozenset[int]) -> tuple[float, float]:
        """Expensive error where known (it decides), then cheap error."""
        return (expensive.get(c, math.inf), cheap_of(c))

    pop = []
    for channels in initial:
        chromosome = frozenset(int(c) for c in channels)
        if len(chromosome) != keep or not all(0 <= c < n_channels for c in chromosome):
            raise ValueError(f"initial: every chromosome needs {keep} distinct valid channels")
        pop.append(chromosome)
    while len(pop) < population:
        pop.append(frozenset(int(c) for c in rng.choice(n_channels, keep, replace=False)))
    best = pop[0]
    for generation in range(generations + 1):
        by_cheap = sorted(set(pop), key=cheap_of)
        if expensive_fitness is not None:
            for c in by_cheap[:top_k]:
                if c not in expensive:
                    expensive[c] = float(expensive_fitness(sorted(c)))
        best = min([best, *by_cheap[:top_k]], key=rank_key)
        if generation == generations:
            break
        children = list(dict.fromkeys([best, *by_cheap[: max(1, population // 10)]]))
        while len(children) < population:
            parents = [
                min(rng.choice(len(pop), tournament), key=lambda i: cheap_of(pop[i]))
                for _ in range(2)
            ]
            child = _crossover(pop[parents[0]], pop[parents[1]], rng)
            children.append(_mutate(child, n_channels, rate, rng))
        pop = children
    return sorted(best)


class ReconstructionFitness:
    """Cheap GA error: how well the kept channels rebuild the next layer's output.

    ``contributions`` is (C, M): row ``c`` is channel ``c``'s additive contribution to the
    next layer's (flattened, pre-bias) output on calibration data, so the output is their
    sum ``y``. For kept channels ``S`` the per-channel scales ``beta`` minimise
    ``||y - sum_{c in S} beta_c z_c||`` (ThiNet-style refit) and the error is that residual
    relative to ``||y||^2``. Everything comes from the C x C Gram matrix, so one call costs
    O(|S|^3). Build it with :func:`channel_contributions`.
    """

    def __init__(self, contributions: torch.Tensor, ridge: float = 1e-8) -> None:
        z = contributions.detach().double().reshape(contributions.shape[0], -1)
        self.gram = (z @ z.T).numpy()
        self.target = self.gram.sum(axis=1)  # <z_c, y> with y = sum of all z
        self.norm = float(self.target.sum())  # ||y||^2
        self.ridge = ridge * float(np.trace(self.gram)) / max(1, len(self.gram))

    def scales(self, channels: Sequence[int]) -> np.ndarray:
        """The least-squares scales ``beta`` of the kept channels (for refitting)."""
        idx = np.asarray(channels)
        g = self.gram[np.ix_(idx, idx)] + self.ridge * np.eye(len(idx))
        return np.linalg.solve(g, self.target[idx])

    def __call__(self, channels: Sequence[int]) -> float:
        beta = self.scales(channels)
        explained = float(beta @ self.target[np.asarray(channels)])
        return max(0.0, 1.0 - explained / self.norm) if self.norm > 0 else 0.0


@torch.no_grad()
def channel_contributions(
    layer_input: torch.Tensor,
    next_layer: nn.Linear | nn.Conv2d,
    positions: int | None = 1024,
    seed: int = 0,
) -> torch.Tensor:
    """(C, M) per-input-channel contributions to ``next_layer``'s output on ``layer_input``.

    ``layer_input`` is what ``next_layer`` receives ((N, ..., C) for Linear, e.g. the tokens of
    a transformer, (N, C, H, W) for Conv2d, groups=1). ``positions`` output positions (rows of
    a Linear's input, pixels of a conv's output) are sampled at random when there are more
    (None: all).
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(next_layer, nn.Linear):
        rows = layer_input.reshape(-1, layer_input.shape[-1])  # (N*..., C)
        if positions is not None and positions < rows.shape[0]:
            rows = rows[torch.randperm(rows.shape[0], generator=g)[:positions].to(rows.device)]
        z = rows[:, :, None] * next_layer.weight.T[None, :, :]  # (N, C, D)
        return z.permute(1, 0, 2).reshape(rows.shape[1], -1)
    if not isinstance(next_layer, nn.Conv2d) or next_layer.groups != 1:
        raise ValueError("next_layer: must be nn.Linear or nn.Conv2d with groups=1")
    weight = next_layer.weight  # (D, C, kh, kw)
    d, c, kh, kw = weight.shape
    patches = F.unfold(
        layer_input,
        (kh, kw),
        dilation=next_layer.dilation,
        padding=next_layer.padding,
        stride=next_layer.stride,
    )  # (N, C*kh*kw, L)
    n, _, length = patches.shape
    patches = patches.reshape(n, c, kh * kw, length)
    if positions is not None and positions < n * length:
        pick = torch.randperm(n * length, generator=g)[:positions]
        patches = patches.permute(0, 3, 1, 2).reshape(n * length, c, kh * kw)[pick]
        return torch.einsum("pck,dck->cpd", patches, weight.reshape(d, c, kh * kw)).reshape(c, -1)
    z = torch.einsum("nckl,dck->cndl", patches, weight.reshape(d, c, kh * kw))
    return z.reshape(c, -1)


def reconstruction_error(full_output: torch.Tensor, subset_output: torch.Tensor) -> float:
    """``||full - subset||^2 / ||full||^2``: the plain layer-wise error of a pruned layer."""
    denom = float((full_output.double() ** 2).sum())
    diff = float(((full_output.double() - subset_output.double()) ** 2).sum())
    return diff / denom if denom > 0 else diff


def _output_channel_params(layer: nn.Module) -> list[torch.Tensor]:
    params = [layer.weight]
    if getattr(layer, "bias", None) is not None:
        params.append(layer.bias)
    return params


@torch.no_grad()
def layer_sensitivity_order(
    model: nn.Module,
    layer_names: Sequence[str],
    evaluate: Callable[[nn.Module], float],
    ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
) -> list[tuple[str, float]]:
    """``(layer, sensitivity)`` pairs, most robust layer first.

    A layer's sensitivity is the mean drop of ``evaluate`` (higher is better, e.g.
    accuracy) when that layer alone loses the ``ratio`` fraction of its output channels with
    the smallest L1 norm (zeroed, then restored), averaged over ``ratios``.
    """
    modules = dict(model.named_modules())
    baseline = float(evaluate(model))
    result = []
    for name in layer_names:
        layer = modules[name]
        params = _output_channel_params(layer)
        saved = [p.detach().clone() for p in params]
        norms = layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).sum(dim=1)
        order = torch.argsort(norms, stable=True)
        drops = []
        for ratio in ratios:
            pruned = order[: round(ratio * len(order))]
            for p in params:
                p[pruned] = 0
            drops.append(baseline - float(evaluate(model)))
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        result.append((name, float(np.mean(drops))))
    return sorted(result, key=lambda item: item[1])
