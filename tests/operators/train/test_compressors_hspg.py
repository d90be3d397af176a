"""HSPG: prox step matches its closed form, half-space rule, zero groups frozen and exact."""

import pytest
import torch
from torch import nn

from operators.train.compressors import HSPG, filter_groups, hspg_param_groups, zero_groups


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 2),
    )  # fmt: skip


def test_filter_groups_include_bias_and_following_batchnorm():
    model = net()
    groups = dict(filter_groups(model))
    assert set(groups) == {"0", "3"}  # conv filters only, not the Linear layer
    first = [model[0].weight, model[0].bias, model[1].weight, model[1].bias]  # w, b, gamma, beta
    assert len(groups["0"]) == 4 and all(a is b for a, b in zip(groups["0"], first, strict=True))
    assert len(groups["3"]) == 2 and groups["3"][0] is model[3].weight  # no BN after conv 2


def hspg_step(rows: list, grad: list, **options) -> torch.Tensor:
    """One HSPG step on a parameter whose rows are its groups; the rows after it."""
    p = nn.Parameter(torch.tensor(rows))
    p.grad = torch.tensor(grad)
    HSPG([{"params": [p], "group_sparse": True}], **options).step()
    return p.detach()


def test_prox_step_matches_closed_form():
    x, grad = [[3.0, 4.0], [0.3, 0.4], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    lr, lam = 0.5, 1.0
    stepped = hspg_step(x, grad, lr=lr, lam=lam, prox_steps=1)
    y = torch.tensor(x) - lr * torch.tensor(grad)
    expected = torch.clamp(1 - lr * lam / y.norm(dim=1, keepdim=True), min=0) * y
    assert torch.allclose(stepped, expected)
    assert torch.all(stepped[1] == 0)  # ||y|| = 0.5 <= lr*lam: the group is zeroed


def test_half_space_rule_on_hand_made_cases():
    x, grad = [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.5, 0.0], [3.0, 0.0], [1.0, 1.0]]
    stepped = hspg_step(x, grad, lr=0.5, lam=0.2, epsilon=0.0)
    # row 0: x^ = 1 - 0.5*(0.5 + 0.2) = 0.65 > 0 kept; row 1: 1 - 0.5*3.2 < 0 -> zero
    assert torch.allclose(stepped[0], torch.tensor([0.65, 0.0]))
    assert torch.all(stepped[1] == 0) and torch.all(stepped[2] == 0)  # row 2 was zero: frozen


def test_zero_groups_stay_zero_and_give_zero_channels():
    model = net()
    opt = HSPG(hspg_param_groups(model), lr=0.05, lam=2.0, prox_steps=5, momentum=0.9)
    x = torch.randn(16, 3, 4, 4)
    target = torch.randint(0, 2, (16,))
    history = []
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
        history.append(zero_groups(model))
    after_prox = history[5:]
    for earlier, later in zip(after_prox, after_prox[1:], strict=False):
        for name, zeros in earlier.items():
            assert set(zeros) <= set(later[name])  # phase 2 never revives a group
    zeros = history[-1]["0"]
    assert zeros, "lam=2 should zero some filters of the first conv"
    model.eval()
    features = model[:3](x)
    assert torch.all(features[:, zeros] == 0)  # BN inside the group: the channel is exactly 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="HSPG"):
        HSPG([nn.Parameter(torch.ones(1))], lr=0)
