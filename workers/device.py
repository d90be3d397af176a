"""The device a worker computes on: its CUDA device when it has one, else the CPU.

One worker process per GPU, chosen with CUDA_VISIBLE_DEVICES; the device is looked up lazily
inside a task, so a Celery parent process never initialises CUDA before it forks.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def worker_device() -> torch.device:
    """The device for this process's trials (called only in the process that computes)."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """A human-readable name recorded with each trial, e.g. 'cuda:0 (NVIDIA H200)' or 'cpu'."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return "cpu"
