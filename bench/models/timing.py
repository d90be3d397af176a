"""Latency of several forms of one model, timed alternately in one process (medians).

The same method as :mod:`bench.ops.speed`, for any number of forms: warm up each form, then
run rounds in which every form runs once in turn, at least ``repeats`` rounds and more (up to
50 times that) while the rounds fit in ``budget_s``; the median of each form's times. Timing
the forms in alternation spreads the machine's load over all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

Runner = Callable[[], object]


def alternate(
    runners: dict[str, Runner], repeats: int = 7, budget_s: float = 4.0
) -> dict[str, float]:
    """Median seconds of each runner (name -> zero-argument call), timed in alternation."""
    if repeats < 1 or not runners:
        raise ValueError("alternate: needs at least one runner and repeats >= 1")
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(2):  # warm-up: allocators, kernels chosen, onnxruntime's first-run work
        for run in runners.values():
            run()
    start_all = time.perf_counter()
    rounds = 0
    while rounds < repeats or (
        rounds < 50 * repeats and time.perf_counter() - start_all < budget_s
    ):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def torch_runner(model: nn.Module, x: torch.Tensor) -> Runner:
    """``model(x)`` under inference mode (the model in eval mode)."""
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def onnx_session(path: Path, threads: int):
    """An onnxruntime CPU session of the file at ``path`` with ``threads`` intra-op threads
    (one inter-op thread), all graph optimisations on, and no spinning: by default an
    onnxruntime thread pool spin-waits after each run, and on two cores the spinning threads
    of the session timed before slowed the next one (identical-shaped dense and compressed
    resnet18 graphs measured 20.8 and 41.4 ms at batch 64; 17.9 and 18.1 without spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session, x: torch.Tensor) -> Runner:
    """``session.run`` on ``x`` (converted to a numpy array once, outside the timing)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())}
    return lambda: session.run(None, feed)
