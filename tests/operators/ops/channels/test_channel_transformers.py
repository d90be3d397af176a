"""``neuron_prune`` on tiny Hugging Face ViT and BERT configs: the FFN neurons (ViT ``mlp.fc1``,
BERT ``intermediate.dense``) go, removing them equals zeroing them, the attention projections
and the residual stream coupled to them are left alone and listed under ``skipped``, and
``criterion: ga`` prunes the same FFN layers instead of crashing."""

from __future__ import annotations

import copy

import pytest
import torch

from operators.core.strategy import apply_strategy, extend, parse_steps
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.ops.channels.graph import dependency_graph, remove_named_channels, zero_channels
from tests.operators.ops.heads.test_heads import MODELS, apply_tiny, tiny_model

pytest.importorskip("transformers")

# per model: the FFN's first layers (pruned), its second layers (the residual stream: skipped)
FFN = {
    "vit": ([f"vit.layers.{i}.mlp.fc1" for i in range(2)],
            [f"vit.layers.{i}.mlp.fc2" for i in range(2)]),
    "bert": ([f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)],
             [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]),
}  # fmt: skip


def _attention_projections(key: str) -> list[str]:
    return [f"{a}.{rel}" if not rel.startswith("../") else f"{a.rsplit('.', 1)[0]}.{rel[3:]}"
            for a in MODELS[key][1] for rel in MODELS[key][2]]  # fmt: skip


@pytest.mark.parametrize("key", ["vit", "bert"])
def test_ffn_neurons_go_and_removing_them_equals_zeroing_them(tmp_path, key):
    model = tiny_model(key)
    cm = apply_tiny(key, [{"op": "neuron_prune", "ratio": 0.5}], model)
    report = cm.report[0]
    first, second = FFN[key]
    for name in first:
        assert len(report["removed_channels"][name]) == 24
        assert cm.model.get_submodule(name).out_features == 24
    for name in second:
        assert cm.model.get_submodule(name).in_features == 24
        assert "coupled to" in report["skipped"][name]
    for name in _attention_projections(key):
        assert "inside" in report["skipped"][name]
        assert cm.model.get_submodule(name).weight.shape == (32, 32)
    oracle = copy.deepcopy(model)
    zero_channels(oracle, report["removed_channels"])  # BERT's pooler too: tanh(0) = 0
    x = MODELS[key][3]()
    with torch.no_grad():
        torch.testing.assert_close(cm.model.eval()(x), oracle(x), rtol=1e-5, atol=1e-5)
    (architecture, config) = MODELS[key][0]
    save_checkpoint(cm, tmp_path / "ffn.safetensors", architecture=architecture, config=config)
    loaded, _ = load_checkpoint(tmp_path / "ffn.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cm.model(x), rtol=1e-5, atol=1e-6)


def test_ga_on_a_transformer_prunes_the_ffn_and_skips_the_attention():
    key = "vit"
    torch.manual_seed(1)
    calibration = torch.randn(16, 1, 8, 8)
    step = {"op": "neuron_prune", "ratio": 0.5, "criterion": "ga", "include": r"layers\.0\."}
    cm = apply_strategy(tiny_model(key), [step], example_input=calibration)
    report = cm.report[0]
    assert report["removed_channels"].keys() == {FFN[key][0][0]}
    assert len(report["removed_channels"][FFN[key][0][0]]) == 24
    assert set(report["skipped"]) == set(_attention_projections(key)[:4]) | {FFN[key][1][0]}
    assert cm.model(calibration).shape == (16, 10)


def test_the_cached_graph_is_traced_again_once_another_op_resized_a_layer():
    cm = apply_tiny("vit", [{"op": "neuron_prune", "ratio": 0.25}])
    graph = dependency_graph(cm)
    assert dependency_graph(cm) is graph  # the graph neuron_prune left, reused
    extend(cm, parse_steps([{"op": "head_prune", "ratio": 0.5}]))
    fresh = dependency_graph(cm)
    assert fresh is not graph
    fc1 = cm.model.get_submodule(FFN["vit"][0][0])
    removed = remove_named_channels(cm, {FFN["vit"][0][0]: [0, 1]})
    assert removed == {FFN["vit"][0][0]: [0, 1]} and fc1.out_features == 34
    x = MODELS["vit"][3]()
    assert cm.model(x).shape == (3, 10)
