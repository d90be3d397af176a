"""The computation of one trial and of a job's baseline, on top of the `operators` library.

Nothing here touches the database: `jobs.py` claims the trial, calls `run_trial`, and writes
what it returns. Metrics are measured on the checkpoint as the user downloads it: the packed
file is written, reloaded without pickle, and evaluated.

A trial starts in one of three ways (its metrics' ``start``): ``fresh`` from the registered
model; ``warm`` from the checkpoint of a finished trial whose steps it extends
(:func:`extends`), applying its own steps on those weights; ``resumed`` from the checkpoint of
the rung-lower trial it continues: the final ops re-applied (they keep those weights exactly:
the same masks, codebooks and dtypes) and only the epochs of its rung fine-tuned, with the
teacher the registered model. A continued trial whose checkpoint cannot be loaded into the
registered architecture (channel removal, low rank change its layers) is ``restarted``: run
fresh at its fidelity. ``fraction`` scales every fine-tuning epoch of a strategy (a rung).
"""

from __future__ import annotations

import operator
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
    parse_steps,
    run_strategy,
    save_checkpoint,
    save_dense_checkpoint,
)
from operators.core.model import CompressedModel
from operators.core.strategy import Compose, extend
from operators.models.sources import build, split_record_config
from operators.train.finetune import finetune
from operators.train.staged import STAGE_KEYS, plan_stages


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
    max_dataset_elements: int | None = None,
) -> dict[str, Any]:
    """Accuracy and size of the uncompressed model: the reference of accuracy_drop and ratios.
    An ``npz:`` dataset declaring more than ``max_dataset_elements`` elements is refused
    before it is inflated."""
    device = torch.device("cpu")
    model = load_model(source)
    dataset = load_dataset(dataset_ref, data_roots, max_dataset_elements)
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
        "validation_samples": len(dataset.y_val),  # the accuracy's binomial noise (search.noise)
    }


#: Ops whose checkpoint reloads into the registered architecture and whose re-application to
#: those weights, at a strength at least as strong, gives the requested strength.
WARM_START_OPS = ("prune", "block_prune", "cluster", "quantize")
#: Strength parameters and when a value is at least as strong as another.
_STRONGER = {"sparsity": operator.ge, "bits": operator.le}


def extends(steps: list[dict[str, Any]], parent_steps: list[dict[str, Any]]) -> bool:
    """Whether ``steps`` extend ``parent_steps``: the parent's steps, each with the same keys
    and values except strengths at least as strong (``sparsity`` higher, ``bits`` fewer),
    possibly followed by more steps; not equal; only :data:`WARM_START_OPS`."""
    if len(steps) < len(parent_steps) or steps == parent_steps:
        return False
    if any(not isinstance(s, dict) or s.get("op") not in WARM_START_OPS for s in steps):
        return False
    for step, base in zip(steps, parent_steps, strict=False):  # the parent is a prefix
        if not isinstance(base, dict) or step.keys() != base.keys():
            return False
        for key, value in step.items():
            stronger = _STRONGER.get(key)
            if stronger is not None and isinstance(value, (int, float)):
                if not isinstance(base[key], (int, float)) or not stronger(value, base[key]):
                    return False
            elif value != base[key]:
                return False
    return True


def strategy_epochs(steps: list[dict[str, Any]], finetune_spec: dict[str, Any]) -> float:
    """The fine-tuning epochs of a strategy run in full: its stages' epochs summed (a stage's
    own ``finetune.epochs``, else the job's)."""
    return sum(
        float({**finetune_spec, **(stage.finetune or {})}.get("epochs", 1))
        for stage in plan_stages(steps)
    )


def scaled_epochs(
    steps: list[dict[str, Any]], finetune_spec: dict[str, Any], fraction: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``steps`` and the job's fine-tuning with every epoch count times ``fraction``."""
    if fraction == 1.0:
        return steps, finetune_spec
    tune = {**finetune_spec, "epochs": float(finetune_spec.get("epochs", 1)) * fraction}
    out = []
    for step in steps:
        own = step.get("finetune") if isinstance(step, dict) else None
        if isinstance(own, dict) and "epochs" in own:
            step = {**step, "finetune": {**own, "epochs": float(own["epochs"]) * fraction}}
        out.append(step)
    return out, tune


def load_start(model: torch.nn.Module, checkpoint: Path) -> bool:
    """Put the weights of a packed ``checkpoint`` (its dense form) into ``model``; False, with
    ``model`` untouched, when its layers do not fit the model's (the ops changed them)."""
    dense, _manifest = load_checkpoint(checkpoint, runtime="dense")
    state, target = dense.state_dict(), model.state_dict()
    if state.keys() != target.keys() or any(state[k].shape != target[k].shape for k in target):
        return False
    model.load_state_dict(state)
    return True


def _resume(
    model: torch.nn.Module,
    steps: list[dict[str, Any]],
    dataset: Dataset,
    finetune_spec: dict[str, Any],
    checkpoint: Path,
    epochs: float,
    **run: Any,
) -> CompressedModel | None:
    """Continue a trial from its rung-lower ``checkpoint``: the final ops re-applied to its
    weights, then ``epochs`` of the last stage's fine-tuning; None if it does not load."""
    cm = Compose([]).apply(model, example_input=run.pop("example_input"))  # teacher: model
    if not load_start(cm.model, checkpoint):
        return None
    on_stage = run.pop("on_stage")
    on_stage("apply")
    plain = [{k: v for k, v in step.items() if k not in STAGE_KEYS} for step in steps]
    extend(cm, parse_steps(plain))
    spec = {**finetune_spec, **(plan_stages(steps)[-1].finetune or {}), "epochs": epochs}
    method = spec.pop("method", "masked")
    on_stage("finetune")
    finetune(cm, dataset, method=method, **run, **spec)
    cm.report.append({"resumed": True, "finetune": method, "epochs": epochs})
    return cm


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
    fraction: float = 1.0,
    start_from: Path | None = None,
    resume_epochs: float | None = None,
    prior_epochs: float = 0.0,
    max_dataset_elements: int | None = None,
) -> dict[str, Any]:
    """Apply the steps, fine-tune, write the packed checkpoint, and measure it as reloaded.
    `on_stage` hears each stage's name as it begins: load, apply, finetune, save, measure.

    ``fraction`` scales the fine-tuning epochs (a rung's fidelity). ``start_from``: a
    checkpoint to start from; with ``resume_epochs`` it is the trial's own rung-lower one
    (``prior_epochs`` of fine-tuning done), continued for ``resume_epochs``; without, a warm
    start's parent. The metrics gain ``start``, ``finetune_epochs`` (run here) and
    ``total_finetune_epochs`` (with those of the trials it continues)."""

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    started = time.perf_counter()
    stage("load")
    model = load_model(source)
    dataset = load_dataset(dataset_ref, data_roots, max_dataset_elements)
    run = {"seed": seed, "device": device, "should_stop": should_stop, "on_progress": on_progress}
    compressed, start, epochs = None, "fresh", 0.0
    if start_from is not None and resume_epochs is not None:
        compressed = _resume(
            model, steps, dataset, finetune_spec, start_from, resume_epochs,
            example_input=dataset.calibration_batch(), on_stage=stage, **run,
        )  # fmt: skip
        start, epochs = ("resumed", prior_epochs + resume_epochs) if compressed else ("restarted", 0)
    elif start_from is not None and load_start(model, start_from):
        start = "warm"
    if compressed is None:
        steps, finetune_spec = scaled_epochs(steps, finetune_spec, fraction)
        compressed = run_strategy(  # stage by stage: ops, then fine-tuning (operators.train.staged)
            model, steps, dataset, finetune_spec,
            example_input=dataset.calibration_batch(), on_stage=stage, **run,
        )  # fmt: skip
        epochs = strategy_epochs(steps, finetune_spec)
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
    metrics["start"] = start
    metrics["finetune_epochs"] = resume_epochs if start == "resumed" else epochs
    metrics["total_finetune_epochs"] = epochs
    return metrics
