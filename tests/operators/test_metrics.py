"""Metrics against closed forms: accuracy and loss of known classifiers, MACs, parameters."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from operators import metrics as metrics_module
from operators.core.strategy import apply_strategy
from operators.data.datasets import Dataset
from operators.format.checkpoint import save_checkpoint, save_dense_checkpoint
from operators.metrics import compute_metrics, count_macs, count_params, evaluate, measure_latency
from operators.models.zoo import build_model


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


class Clocked(nn.Module):
    """A model whose forward passes take the given times on a fake clock."""

    def __init__(self, seconds: list[float]) -> None:
        super().__init__()
        self.seconds, self.now, self.batches = list(seconds), 0.0, []

    def clock(self) -> float:
        return self.now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append((tuple(x.shape), self.training, torch.is_inference_mode_enabled()))
        self.now += self.seconds.pop(0)
        return x


def test_latency_is_the_median_after_warmup(monkeypatch):
    model = Clocked([1.0, 2.0, 0.005, 0.001, 0.003, 0.002, 0.004])  # two warmup passes first
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(perf_counter=model.clock))
    result = measure_latency(model, (64,), batch_size=4, warmup=2, repeats=5)
    assert result["latency_ms"] == pytest.approx(3.0)
    assert result["throughput"] == pytest.approx(4 / 0.003)
    assert model.batches == [((4, 64), False, True)] * 7  # eval mode, no autograd
    assert model.training  # the mode is restored


def test_latency_of_a_real_model_is_positive():
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
    assert {k: metrics[k] for k in ("accuracy", "loss")} == evaluate(cm.model, tiny)
    assert (metrics["params"], metrics["nonzero_params"]) == count_params(cm.model)
    assert metrics["compression_ratio"] == pytest.approx(baseline_size / size)
    assert metrics["accuracy_drop"] == pytest.approx(baseline["accuracy"] - metrics["accuracy"])
    assert metrics["macs"] == 64 * 32 + 32 * 3
    assert metrics["nonzero_params"] < metrics["params"]
