"""The metrics every trial records (the job spec's metric names), measured on a runnable model.

:func:`compute_metrics` gives all of them except ``duration_s`` (the worker times the trial):
accuracy, accuracy_drop, loss (on the validation split the search selects on), test_accuracy,
test_accuracy_drop (on the test split it never sees, when the dataset has one), params,
nonzero_params, size_bytes, compression_ratio, macs, latency_ms, throughput (the canonical
list: ``search.metric_table``). ``size_bytes`` is the size of the packed checkpoint file, and
the baseline is the dense fp32 checkpoint of the uncompressed model.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.modes import eval_mode
from operators.core.registry import PackedModule
from operators.data.datasets import Dataset
from operators.runtime import SparseLinear, stored_parameters

MAC_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
    split: str = "val",
) -> dict[str, float]:
    """Top-1 ``accuracy`` (0..1) and mean cross-entropy ``loss`` on the validation split (or
    ``split="test"``)."""
    device = torch.device(device)
    model.to(device)
    xs, ys = dataset.split(split)
    n = len(ys)
    correct, loss_sum = 0, 0.0
    with eval_mode(model), torch.inference_mode():
        for start in range(0, n, batch_size):
            x = xs[start : start + batch_size].to(device)
            y = ys[start : start + batch_size].to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum())
    return {"accuracy": correct / n, "loss": loss_sum / n}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters) over all ``nn.Parameter``s (weights, biases, norms),
    plus the stored values of CSR weights of layers running sparse; a layer that runs packed
    or dense by batch size counts once."""
    params = [p.detach() for p in stored_parameters(model)]
    params += [m.weight_csr.values() for m in model.modules() if isinstance(m, SparseLinear)]
    return (
        sum(p.numel() for p in params),
        sum(int(torch.count_nonzero(p)) for p in params),
    )


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates per sample that the model's layers actually execute.

    Measured with forward hooks on one zero input of ``(1, *input_shape)``: a dense Linear
    layer costs ``in_features`` per output value, a dense Conv layer ``in_channels / groups *
    kernel``; a packed layer (MPD blocks, CSR weights) reports what its kernel computes.
    """
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, PackedModule):
            total += module.executed_macs(output)
            return
        if isinstance(module, nn.Linear):
            per_output = module.in_features
        else:
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        total += per_output * output.numel()

    device = next(model.parameters(), torch.empty(0)).device
    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (*MAC_LAYERS, PackedModule))
    ]
    try:
        with eval_mode(model), torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 30,
) -> dict[str, float]:
    """Median wall time of one forward pass of a random batch, and samples per second."""
    device = torch.device(device)
    model.to(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    with eval_mode(model), torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"latency_ms": median * 1e3, "throughput": batch_size / median}


def held_out_metrics(
    model: nn.Module, dataset: Dataset, baseline: dict | None = None, *,
    device: str | torch.device = "cpu",
) -> dict[str, float]:  # fmt: skip
    """``test_accuracy`` on the test split the search never sees, and ``test_accuracy_drop``
    against ``baseline["test_accuracy"]`` when given; nothing for a dataset without one."""
    if dataset.x_test is None:
        return {}
    out = {"test_accuracy": evaluate(model, dataset, device=device, split="test")["accuracy"]}
    if (baseline or {}).get("test_accuracy") is not None:
        out["test_accuracy_drop"] = baseline["test_accuracy"] - out["test_accuracy"]
    return out


def compute_metrics(
    model: nn.Module,
    dataset: Dataset,
    *,
    checkpoint_path: Path,
    baseline: dict | None = None,
    device: str | torch.device = "cpu",
    latency_batch_size: int = 1,
) -> dict[str, float | int]:
    """Every job-spec metric but ``duration_s``. ``baseline`` holds the dense model's
    ``accuracy`` and ``size_bytes``; ``accuracy_drop`` and ``compression_ratio`` are given
    only where the baseline figure they derive from is (not None)."""
    baseline = baseline or {}
    quality = evaluate(model, dataset, device=device)
    params, nonzero = count_params(model)
    size = os.path.getsize(checkpoint_path)
    metrics: dict[str, float | int] = {**quality}
    if baseline.get("accuracy") is not None:
        metrics["accuracy_drop"] = baseline["accuracy"] - quality["accuracy"]
    metrics |= held_out_metrics(model, dataset, baseline, device=device)
    metrics |= {"params": params, "nonzero_params": nonzero, "size_bytes": size}
    if baseline.get("size_bytes") is not None:
        metrics["compression_ratio"] = baseline["size_bytes"] / size
    return {
        **metrics,
        "macs": count_macs(model, dataset.input_shape),
        **measure_latency(model, dataset.input_shape, batch_size=latency_batch_size, device=device),
    }
