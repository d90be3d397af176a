"""A plain supervised training loop (cross-entropy) with the hooks trials need.

The hooks: ``after_step`` runs after every optimizer step (fine-tuning uses it to hold the
compression: masks, storage dtype); ``should_stop`` is polled every few batches and between
epochs, and a True answer raises :class:`Cancelled`; ``on_progress`` receives the fraction of
the run done. ``loss`` replaces the cross-entropy (e.g. distillation) and ``build_optimizer``
the named optimizer (e.g. HSPG). Shuffling uses its own seeded generator, so a run is reproducible and leaves
torch's global random state alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.modes import train_mode
from operators.data.datasets import Dataset

POLL_EVERY_BATCHES = 20
SGD_MOMENTUM = 0.9

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr, weight_decay: torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay
    ),
    "adamw": lambda params, lr, weight_decay: torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay
    ),
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(
        params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay
    ),
}


class Cancelled(Exception):
    """Raised by :func:`train` when ``should_stop`` answered True."""


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """An optimizer from :data:`OPTIMIZERS` over the model's trainable parameters."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)


def _batches(
    n: int, batch_size: int, total_steps: int, generator: torch.Generator
) -> Iterator[tuple[int, bool, torch.Tensor]]:
    """Yield ``(step, starts_epoch, indices)`` over seeded per-epoch permutations."""
    step = 0
    while step < total_steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if step >= total_steps:
                return
            yield step, start == 0, order[start : start + batch_size]
            step += 1


SCHEDULES = ("constant", "cosine")


def train(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: float = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    after_step: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
) -> None:
    """Train ``model`` in place on ``dataset``'s train split for ``epochs`` (may be fractional).

    ``schedule`` is ``"constant"`` or ``"cosine"`` (learning rate annealed to 0 over the run).

    The model is moved to ``device``; its train/eval mode is restored afterwards.
    Raises :class:`Cancelled` when ``should_stop()`` returns True, ValueError on bad arguments.
    """
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs >= 0):
        raise ValueError(f"epochs: must be a finite number >= 0, got {epochs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    model.to(device)
    if build_optimizer is not None:
        opt = build_optimizer(model)
    else:
        opt = make_optimizer(model, optimizer, lr, weight_decay)
    n = len(dataset.y_train)
    total_steps = math.ceil(epochs * math.ceil(n / batch_size))
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
        if schedule == "cosine"
        else None
    )
    generator = torch.Generator().manual_seed(seed)
    with train_mode(model):
        for step, starts_epoch, idx in _batches(n, batch_size, total_steps, generator):
            if should_stop is not None and (starts_epoch or step % POLL_EVERY_BATCHES == 0):
                if should_stop():
                    raise Cancelled(f"training stopped at step {step} of {total_steps}")
            x = dataset.x_train[idx].to(device, non_blocking=True)
            y = dataset.y_train[idx].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            (F.cross_entropy(model(x), y) if loss is None else loss(model, x, y)).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step()
            if on_progress is not None and (step + 1) % POLL_EVERY_BATCHES == 0:
                on_progress((step + 1) / total_steps)
        if on_progress is not None:
            on_progress(1.0)
