"""Metrics against closed forms: accuracy and loss of known classifiers, MACs, parameters."""

import math

import pytest
import torch
from torch import nn

from operators.checkpoint import save_checkpoint, save_dense_checkpoint
from operators.datasets import Dataset
from operators.metrics import compute_metrics, count_macs, count_params, evaluate, measure_latency
from operators.strategy import apply_strategy
from operators.zoo import build_model


@pytest.fixture
def labelled() -> Dataset:
    """x is 10 * one_hot(y): the identity is a perfect classifier."""
    y = torch.tensor([0, 1, 2, 2, 0, 1, 2])
    x = 10.0 * nn.functional.one_hot(y, 3).float()
    return Dataset(x, y, x, y, num_classes=3)


def test_perfect_classifier(labelled):
    result = evaluate(nn.Identity(), labelled, batch_size=3)
    assert result["accuracy"] == 1.0
    assert result["loss"] == pytest.approx(math.log(1 + 2 * math.exp(-10)), abs=1e-5)


def test_constant_classifier(labelled):
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    result = evaluate(model, labelled, batch_size=2)
    assert result["accuracy"] == pytest.approx(2 / 7)
    logsumexp = math.log(math.exp(2) + 2)
    expected = (2 * (logsumexp - 2) + 5 * logsumexp) / 7
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert model.training  # mode restored


def test_count_macs_and_params_of_lenet_300_100():
    model = build_model("lenet-300-100", {})
    assert count_macs(model, (1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10
    assert count_params(model) == (266_610, 266_610)
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.9}])
    assert count_params(cm.model) == (266_610, 266_610 - round(0.9 * 266_200))


def test_count_macs_of_lenet_5():
    conv = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25
    assert (
        count_macs(build_model("lenet-5", {}), (1, 28, 28)) == conv + 400 * 120 + 120 * 84 + 84 * 10
    )


def test_latency_is_a_positive_median():
    result = measure_latency(
        build_model("mlp", {"in_features": 64}), (64,), batch_size=4, warmup=1, repeats=5
    )
    assert result["latency_ms"] > 0
    assert result["throughput"] == pytest.approx(4 / (result["latency_ms"] / 1e3))


def test_compute_metrics_gives_every_job_spec_metric(tiny, tmp_path):
    model = build_model("mlp", {"in_features": 64, "hidden": [32], "num_classes": 3})
    config = {"in_features": 64, "hidden": [32], "num_classes": 3}
    baseline_size = save_dense_checkpoint(
        model, tmp_path / "d.safetensors", architecture="mlp", config=config
    )
    baseline = {**evaluate(model, tiny), "size_bytes": baseline_size}
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.9}, {"op": "quantize"}])
    size = save_checkpoint(cm, tmp_path / "p.safetensors", architecture="mlp", config=config)
    metrics = compute_metrics(
        cm.model, tiny, checkpoint_path=tmp_path / "p.safetensors", baseline=baseline
    )
    assert set(metrics) == {
        "accuracy",
        "accuracy_drop",
        "loss",
        "params",
        "nonzero_params",
        "size_bytes",
        "compression_ratio",
        "macs",
        "latency_ms",
        "throughput",
    }
    assert metrics["size_bytes"] == size
    assert metrics["compression_ratio"] == pytest.approx(baseline_size / size)
    assert metrics["accuracy_drop"] == pytest.approx(baseline["accuracy"] - metrics["accuracy"])
    assert metrics["macs"] == 64 * 32 + 32 * 3
    assert metrics["nonzero_params"] < metrics["params"]
