"""Weight unification: the projection is exact (brute force, LP), packing round-trips."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch.nn.utils import parametrize

from operators.ops.unify.algorithm import (
    KEEP,
    PRUNE,
    UNIFY,
    UnifiedParametrization,
    block_costs,
    enforce_unified,
    pack_unified,
    project_unify,
    unpack_unified,
)


def brute_force_cost(unify, prune, n_unify, n_prune):
    best = np.inf
    for labels in itertools.product((KEEP, UNIFY, PRUNE), repeat=len(unify)):
        labels = np.array(labels)
        if (labels == UNIFY).sum() == n_unify and (labels == PRUNE).sum() == n_prune:
            best = min(best, unify[labels == UNIFY].sum() + prune[labels == PRUNE].sum())
    return best


def lp_cost(unify, prune, n_unify, n_prune):
    """The transportation LP (totally unimodular, so its optimum is integral)."""
    b = len(unify)
    cost = np.concatenate([np.zeros(b), unify, prune])
    a_eq = np.zeros((b + 2, 3 * b))
    for i in range(b):
        a_eq[i, [i, b + i, 2 * b + i]] = 1
    a_eq[b, b : 2 * b] = 1
    a_eq[b + 1, 2 * b :] = 1
    rhs = np.concatenate([np.ones(b), [n_unify, n_prune]])
    return linprog(cost, A_eq=a_eq, b_eq=rhs, bounds=(0, 1), method="highs").fun


def sq_dist(a, b):
    return float(((a.double() - b.double()) ** 2).sum())


@pytest.mark.parametrize("seed", range(10))
def test_projection_equals_brute_force_over_block_assignments(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 8, generator=g) * torch.rand(4, 8, generator=g)  # 8 blocks of 2x2
    for unify_ratio, prune_ratio in [(0.25, 0.25), (0.5, 0.375), (0.0, 0.5), (0.75, 0.0)]:
        projected, state = project_unify(w, (2, 2), unify_ratio, prune_ratio)
        unify, prune = block_costs(w, (2, 2))
        n_u, n_p = round(unify_ratio * 8), round(prune_ratio * 8)
        assert int((state.states == UNIFY).sum()) == n_u
        assert int((state.states == PRUNE).sum()) == n_p
        expected = brute_force_cost(unify, prune, n_u, n_p)
        assert sq_dist(projected, w) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_projection_equals_the_transportation_lp_on_larger_layers():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(12, 3, 3, 3, generator=g) * torch.rand(12, 1, 1, 1, generator=g)
    projected, _ = project_unify(w, (2, 3), 0.4, 0.3)  # 6 x 9 = 54 blocks, edge-free
    unify, prune = block_costs(w, (2, 3))
    expected = lp_cost(unify, prune, round(0.4 * 54), round(0.3 * 54))
    assert sq_dist(projected, w) == pytest.approx(expected, rel=1e-6)


def test_blocks_respect_the_constraint_and_edge_blocks():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(3))  # 3 x 3 grid, ragged
    projected, state = project_unify(w, (2, 3), 0.5, 0.3)
    states, scales = state.element_states(), state.element_scales()
    assert torch.all(projected[states == PRUNE] == 0)
    unified = states == UNIFY
    assert torch.allclose(projected[unified].abs(), scales[unified])
    assert torch.all((projected[unified] >= 0) == (w[unified] >= 0))  # signs kept
    assert torch.equal(projected[states == KEEP], w[states == KEEP])


def test_scale_is_the_argmin_of_a_grid_search():
    w = torch.tensor([[0.3, -1.2, 0.7, -0.1]])
    projected, state = project_unify(w, (1, 4), 1.0)
    grid = torch.linspace(0, 2, 20001)
    errors = ((w.abs() - grid[:, None]) ** 2).sum(dim=1)
    assert float(state.scales[0]) == pytest.approx(float(grid[errors.argmin()]), abs=1e-4)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.float16])
def test_pack_unpack_round_trip(scale_dtype):
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    projected, state = project_unify(w, (2, 4), 0.5, 0.25)
    packed = pack_unified(projected, state, scale_dtype)
    assert packed["scales"].numel() == int((state.states == UNIFY).sum())
    restored = unpack_unified(packed, w.shape, (2, 4))
    tol = 0 if scale_dtype == torch.float32 else 1e-3
    assert torch.allclose(restored, projected, rtol=tol, atol=tol)


def test_enforce_holds_the_pattern_after_a_gradient_step():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    projected, state = project_unify(w, (2, 2), 0.5, 0.25)
    stepped = projected + 0.01 * torch.randn(4, 8, generator=torch.Generator().manual_seed(6))
    held = enforce_unified(stepped, state)
    states = state.element_states()
    assert torch.all(held[states == PRUNE] == 0)
    for b in torch.nonzero(state.states == UNIFY).flatten().tolist():
        r, c = divmod(b, 4)
        block = held[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
        assert torch.allclose(block.abs(), block.abs()[0, 0].expand(2, 2))


def test_parametrization_gives_block_scale_gradients():
    layer = torch.nn.Linear(8, 4, bias=False)
    projected, state = project_unify(layer.weight, (2, 2), 0.5, 0.25)
    with torch.no_grad():
        layer.weight.copy_(projected)
    parametrize.register_parametrization(layer, "weight", UnifiedParametrization(state, projected))
    assert torch.allclose(layer.weight, projected, atol=1e-6)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(8))
    layer(x).pow(2).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    states = state.element_states()
    assert torch.all(grad[states == PRUNE] == 0)
    # a unified block's weights move together: grad * sign is constant in the block
    b = int(torch.nonzero(state.states == UNIFY)[0])
    r, c = divmod(b, 4)
    sg = (grad * torch.where(projected >= 0, 1.0, -1.0))[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
    assert torch.allclose(sg, sg[0, 0].expand(2, 2), atol=1e-6)


def test_bad_ratios():
    with pytest.raises(ValueError, match="ratio"):
        project_unify(torch.ones(2, 2), (1, 1), 0.7, 0.5)
