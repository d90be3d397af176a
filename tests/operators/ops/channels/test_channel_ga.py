"""GA channel selection: exact keep counts, optimum on separable fitness, helpers."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from operators.ops.channels.ga import (
    ReconstructionFitness,
    _crossover,
    _mutate,
    channel_contributions,
    layer_sensitivity_order,
    reconstruction_error,
    select_channels_ga,
)


def test_crossover_and_mutation_preserve_the_count():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = frozenset(rng.choice(20, 7, replace=False).tolist())
        b = frozenset(rng.choice(20, 7, replace=False).tolist())
        child = _mutate(_crossover(a, b, rng), 20, 0.5, rng)
        assert len(child) == 7 and all(0 <= c < 20 for c in child)


def test_ga_finds_the_best_set_on_a_separable_fitness_and_keeps_exactly_keep():
    scores = np.random.default_rng(1).standard_normal(40)
    seen = []

    def cheap(channels):
        seen.append(len(channels))
        return -float(scores[channels].sum())

    chosen = select_channels_ga(40, 10, cheap, population=30, generations=60, seed=0)
    assert chosen == sorted(np.argsort(-scores)[:10].tolist())
    assert set(seen) == {10}


def test_expensive_fitness_only_for_the_best_few_and_decides():
    scores = np.arange(12, dtype=float)
    calls = []

    def error(channels):
        return float(abs(sum(channels) - 30))  # prefers a set the cheap error ranks lower

    def expensive(channels):
        calls.append(channels)
        return error(channels)

    chosen = select_channels_ga(
        12, 4, lambda c: -scores[c].sum(), expensive, top_k=2, population=10, generations=5
    )
    assert len(chosen) == 4
    assert len(calls) <= 2 * 6  # at most top_k new sets per generation
    assert error(chosen) == min(error(c) for c in calls)


def test_ga_within_epsilon_of_brute_force_on_a_real_layer():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(256, 12) @ torch.randn(12, 12))
    fitness = ReconstructionFitness(channel_contributions(x, nn.Linear(12, 6)))
    brute = min(fitness(list(c)) for c in itertools.combinations(range(12), 5))
    chosen = select_channels_ga(12, 5, fitness, population=20, generations=30, seed=1)
    assert fitness(chosen) <= brute + 1e-6


def test_reconstruction_fitness_conv_matches_direct_least_squares():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 6, 5, 5)
    z = channel_contributions(x, conv, positions=None)
    y = conv(x).detach().reshape(-1)  # (N, C_out, H*W) order, like z's columns
    assert torch.allclose(z.sum(0), y, atol=1e-5)  # contributions add up to the conv output
    fitness = ReconstructionFitness(z)
    channels = [0, 2, 5]
    sub = z[channels].double().numpy()
    target = y.double().numpy()
    beta, *_ = np.linalg.lstsq(sub.T, target, rcond=None)
    residual = ((sub.T @ beta - target) ** 2).sum()
    assert fitness(channels) == pytest.approx(residual / (target**2).sum(), rel=1e-4)
    assert fitness(list(range(6))) == pytest.approx(0, abs=1e-6)


def test_reconstruction_error():
    full = torch.tensor([3.0, 4.0])
    assert reconstruction_error(full, full) == 0
    assert reconstruction_error(full, torch.zeros(2)) == 1


def test_layer_sensitivity_order_puts_the_harmless_layer_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[4:] = 0  # half of layer 0's channels are dead already
        model[0].bias[4:] = 0
    x = torch.randn(64, 4)
    reference = model(x).detach()
    before = [p.clone() for p in model.parameters()]

    def evaluate(m):
        return -float(((m(x) - reference) ** 2).mean())

    order = layer_sensitivity_order(model, ["0", "2"], evaluate, ratios=(0.25, 0.5))
    assert [name for name, _ in order] == ["0", "2"] and order[0][1] == pytest.approx(0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_keep():
    with pytest.raises(ValueError, match="keep"):
        select_channels_ga(4, 5, lambda c: 0.0)
