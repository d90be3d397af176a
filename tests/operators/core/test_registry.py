"""The one registry: every op's packed kinds are registered, modules are described and rebuilt
from JSON arguments, and unknown kinds are refused by name."""

import pytest
import torch
from torch import nn

from operators.core.model import PackSpec
from operators.core.registry import (
    MODULE_KINDS,
    OPS,
    PACKERS,
    PackedModule,
    build_module,
    describe,
    kind_of,
    pack_module,
    register,
)


def test_every_packer_builds_a_registered_packed_kind():
    assert {"mpd", "cluster", "int8", "unify"} <= set(PACKERS)
    for kind, classes in PACKERS.items():
        for cls in classes.values():
            assert issubclass(cls, PackedModule), kind
            assert MODULE_KINDS[cls.kind].type is cls


@pytest.mark.parametrize(
    "module",
    [
        nn.Linear(5, 3, bias=False),
        nn.Conv2d(4, 6, (3, 1), stride=2, padding=1, groups=2),
        nn.BatchNorm2d(7, eps=1e-3),
        nn.BatchNorm1d(2, affine=False),
    ],
)
def test_plain_modules_are_described_and_rebuilt(module):
    description = describe(module)
    rebuilt = build_module(description["kind"], description["args"])
    assert type(rebuilt) is type(module) and describe(rebuilt) == description
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }


def test_unregistered_modules_and_kinds():
    assert kind_of(nn.ReLU()) is None and describe(nn.ReLU()) is None
    with pytest.raises(ValueError, match="unknown module kind 'gru'; known: linear, conv2d"):
        build_module("gru", {})
    with pytest.raises(ValueError, match="cannot build a linear module"):
        build_module("linear", {"in_features": 3})
    with pytest.raises(ValueError, match="no packed form 'mpd' for ReLU"):
        pack_module(nn.ReLU(), PackSpec("mpd"))


def test_an_op_name_is_registered_once():
    class Impostor(OPS["prune"]):
        pass

    with pytest.raises(ValueError, match="op 'prune' is registered twice"):
        register(Impostor)
    assert register(OPS["prune"]) is OPS["prune"]  # registering the same class again is fine
    assert torch.nn.Linear in PACKERS["mpd"]
