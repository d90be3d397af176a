"""Output warps: monotone, invertible, and constraint bounds warped consistently."""

import pytest
import torch

from search import Objective
from search.warp import OutputWarp, choose_warps, warped_bounds

OBJECTIVE = Objective.from_spec(
    {
        "maximize": "compression_ratio",
        "constraints": [
            {"metric": "accuracy_drop", "max": 0.01},
            {"metric": "loss", "min": 0.1, "max": 0.2},
        ],
    }
)
NAMES = ["compression_ratio", "accuracy_drop", "loss"]


@pytest.mark.parametrize(
    "warp", [OutputWarp(), OutputWarp("log"), OutputWarp("bilog", center=0.01, scale=0.01)]
)
def test_warps_are_increasing_and_invertible(warp):
    y = torch.tensor([0.002, 0.005, 0.01, 0.03, 0.5, 2.0, 97.0], dtype=torch.double)
    z = warp.transform(y)
    assert bool((z.diff() > 0).all())
    assert torch.allclose(warp.untransform(z), y)
    mean, std = warp.describe(z, torch.full_like(z, 0.1))
    assert torch.allclose(mean, y) and bool((std > 0).all())


def test_choice_of_warps_and_bounds():
    Y = torch.tensor([[2.0, -0.001, 0.15], [97.0, 0.5, 0.3]], dtype=torch.double)
    warps = choose_warps(OBJECTIVE, NAMES, Y)
    # positive objective: log; one-bound constraint: bilog around the bound; two bounds: none
    assert [w.kind for w in warps] == ["log", "bilog", "identity"]
    assert warps[1].center == 0.01 and warps[1].scale == 0.01
    assert warped_bounds(OBJECTIVE, NAMES, warps) == [(1, 0.0, 1), (2, 0.2, 1), (2, 0.1, -1)]
    # a non-positive observation of the objective metric: no log
    assert choose_warps(OBJECTIVE, NAMES, Y * torch.tensor([-1.0, 1.0, 1.0]))[0].kind == "identity"
