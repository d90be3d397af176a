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
    compute_metrics,
    count_macs,
    count_params,
    evaluate,
    held_out_metrics,
    load_checkpoint,
    load_dataset,
    measure_latency,
    run_strategy,
    save_checkpoint,
    save_dense_checkpoint,
)
from operators.models.sources import build, split_record_config


@dataclass(frozen=True)
class ModelSource:
    """A registered model as the worker sees it: architecture (``source:name``, built through
    :mod:`operators.models.sources`), config and a weights file. A config as the model record
    stores it has the input spec in it: it is split off into ``input_shape`` / ``input_dtype``."""

    architecture: str
    config: dict[str, Any]
    weights_path: Path
    input_shape: list[int] | None = None
    input_dtype: str = "float32"

    def __post_init__(self) -> None:
        config, shape, dtype = split_record_config(self.config)
        if shape is not None or len(config) != len(self.config):
            object.__setattr__(self, "config", config)
            object.__setattr__(self, "input_shape", shape)
            object.__setattr__(self, "input_dtype", dtype)


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
    model = build(source.architecture, source.config)
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
        **held_out_metrics(model, dataset, device=device),  # test_accuracy, when there is one
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
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Apply the steps, fine-tune, write the packed checkpoint, and measure it as reloaded.
    `on_stage` hears each stage's name as it begins: load, apply, finetune, save, measure."""

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    started = time.perf_counter()
    stage("load")
    model = load_model(source)
    dataset = load_dataset(dataset_ref, data_roots)
    compressed = run_strategy(  # stage by stage: ops, then fine-tuning (operators.train.staged)
        model,
        steps,
        dataset,
        finetune_spec,
        example_input=dataset.calibration_batch(),
        seed=seed,
        device=device,
        should_stop=should_stop,
        on_progress=on_progress,
        on_stage=stage,
    )
    compressed.model.to("cpu")
    stage("save")
    save_checkpoint(
        compressed,
        checkpoint_path,
        architecture=source.architecture,
        config=source.config,
        metadata=metadata,
    )
    stage("measure")
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
