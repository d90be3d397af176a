"""The default search space: strategies that fit the model's layers, valid as job specs."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.sources import build
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


def test_a_transformer_gets_heads_and_neurons_and_every_corner_applies():
    pytest.importorskip("transformers")
    from tests.operators.ops.heads.test_heads import MODELS, tiny_model

    for key in ("vit", "bert"):
        with torch.device("meta"):
            meta = build(*MODELS[key][0])
        space = default_search_space(meta)
        assert "heads+neurons+fp16" in names(space), key
        strategy = next(s for s in space["strategies"] if s["name"] == "heads+neurons+fp16")
        assert [s["op"] for s in strategy["steps"]] == ["head_prune", "neuron_prune", "quantize"]
        search = SearchSpace.from_spec({"strategies": [strategy]})
        for end in ("low", "high"):
            values = {p.path: getattr(p, end) for p in search.strategies[0].params}
            steps = search.materialize(Candidate("heads+neurons+fp16", values))
            cm = apply_strategy(tiny_model(key), steps, example_input=MODELS[key][3]())
            kept = [h["kept"] for h in cm.report[0]["heads"].values()]
            assert kept == ([4, 4] if end == "low" else [2, 2]), (key, end)


def test_a_model_without_attention_gets_no_head_pruning():
    with torch.device("meta"):
        model = build_model("resnet-cifar", {"depth": 8})
    assert "heads+neurons+fp16" not in names(default_search_space(model))
