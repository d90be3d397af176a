"""The default search space: strategies that fit the model's layers, valid as job specs."""

import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.train.default_space import default_search_space
from operators.train.staged import validate_strategy
from search import Candidate, SearchSpace


def names(space: dict) -> list[str]:
    return [s["name"] for s in space["strategies"]]


def test_an_mlp_gets_staged_pruning_neurons_lowrank_and_mpd():
    with torch.device("meta"):
        model = build_model("lenet-300-100", {})
    assert names(default_search_space(model)) == [
        "deep-compression", "prune+fp16", "neurons+fp16", "lowrank+fp16", "mpd+fp16",
    ]  # fmt: skip


def test_a_cnn_gets_filter_removal():
    with torch.device("meta"):
        model = build_model("resnet-cifar", {"depth": 8})
    assert "filters+fp16" in names(default_search_space(model))


def test_every_corner_of_the_default_space_is_a_valid_strategy_that_applies():
    torch.manual_seed(0)
    model = build_model("mlp", {"in_features": 64, "hidden": [48], "num_classes": 10})
    space = SearchSpace.from_spec(default_search_space(model))
    for strategy in space.strategies:
        for end in ("low", "high"):
            values = {p.path: (p.low if end == "low" else p.high) for p in strategy.params}
            values = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}
            steps = space.materialize(Candidate(strategy.name, values))
            validate_strategy(steps)
            plain = [{k: v for k, v in s.items() if k != "schedule"} for s in steps]
            apply_strategy(model, plain, example_input=torch.zeros(4, 64))
