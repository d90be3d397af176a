"""The computation of one trial and of a job's baseline, on top of the `operators` library.

Nothing here touches the database: `jobs.py` claims the trial, calls `run_trial`, and writes
what it returns. Metrics are measured on the checkpoint as the user downloads it: the packed
file is written, reloaded without pickle, and evaluated.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from operators import (
    Dataset,
    apply_strategy,
    build_model,
    compute_metrics,
    count_macs,
    count_params,
    evaluate,
    finetune,
    load_checkpoint,
    load_dataset,
    measure_latency,
    save_checkpoint,
    save_dense_checkpoint,
)


@dataclass(frozen=True)
class ModelSource:
    """A registered model as the worker sees it: architecture, config and a weights file."""

    architecture: str
    config: dict[str, Any]
    weights_path: Path


_model_cache: OrderedDict[Path, dict[str, torch.Tensor]] = OrderedDict()
_cache_lock = threading.Lock()


def load_model(source: ModelSource) -> torch.nn.Module:
    """Build the architecture and load the safetensors weights (strict; never pickle)."""
    with _cache_lock:
        state = _model_cache.get(source.weights_path)
        if state is None:
            state = load_file(str(source.weights_path))
            _model_cache[source.weights_path] = state
            while len(_model_cache) > 4:
                _model_cache.popitem(last=False)
        else:
            _model_cache.move_to_end(source.weights_path)
    model = build_model(source.architecture, source.config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_model_fits_dataset(model: torch.nn.Module, dataset: Dataset) -> None:
    """Fail early, with a clear message, when the model cannot take this dataset's samples."""
    sample = dataset.x_val[:2]
    try:
        with torch.inference_mode():
            out = model(sample)
    except Exception as exc:
        raise ValueError(
            f"the model cannot run on samples of shape {tuple(dataset.input_shape)}: {exc}"
        ) from exc
    if out.ndim != 2 or out.shape[1] < dataset.num_classes:
        raise ValueError(
            f"the model outputs shape {tuple(out.shape[1:])} but the dataset has "
            f"{dataset.num_classes} classes"
        )


def compute_baseline(
    source: ModelSource,
    dataset_ref: str,
    data_roots: list[Path],
    checkpoint_path: Path,
    *,
    latency_batch_size: int = 1,
) -> dict[str, Any]:
    """Accuracy and size of the uncompressed model: the reference of accuracy_drop and ratios."""
    device = torch.device("cpu")
    model = load_model(source)
    dataset = load_dataset(dataset_ref, data_roots)
    check_model_fits_dataset(model, dataset)
    size = save_dense_checkpoint(
        model, checkpoint_path, architecture=source.architecture, config=source.config
    )
    quality = evaluate(model, dataset, device=device)
    params, nonzero = count_params(model)
    return {
        **quality,
        "size_bytes": size,
        "params": params,
        "nonzero_params": nonzero,
        "macs": count_macs(model, dataset.input_shape),
        **measure_latency(model, dataset.input_shape, batch_size=latency_batch_size, device=device),
    }


def run_trial(
    *,
    source: ModelSource,
    dataset_ref: str,
    data_roots: list[Path],
    steps: list[dict[str, Any]],
    finetune_spec: dict[str, Any],
    seed: int,
    baseline: dict[str, Any],
    checkpoint_path: Path,
    device: torch.device,
    latency_batch_size: int = 1,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply the steps, fine-tune, write the packed checkpoint, and measure it as reloaded."""
    started = time.perf_counter()
    model = load_model(source)
    dataset = load_dataset(dataset_ref, data_roots)
    compressed = apply_strategy(model, steps, example_input=dataset.calibration_batch())
    spec = dict(finetune_spec)
    method = spec.pop("method", "masked")
    finetune(
        compressed,
        dataset,
        method=method,
        seed=seed,
        device=device,
        should_stop=should_stop,
        on_progress=on_progress,
        **spec,
    )
    compressed.model.to("cpu")
    save_checkpoint(
        compressed,
        checkpoint_path,
        architecture=source.architecture,
        config=source.config,
        metadata=metadata,
    )
    packed, _manifest = load_checkpoint(checkpoint_path, device=device)
    metrics = compute_metrics(
        packed,
        dataset,
        checkpoint_path=checkpoint_path,
        baseline=baseline,
        device=device,
        latency_batch_size=latency_batch_size,
    )
    metrics["duration_s"] = time.perf_counter() - started
    return metrics
