"""Fine-tuning a compressed model to recover accuracy while its compression is held.

``method`` names how (the job spec's ``finetune.method``):

- ``none``: leave the model as the ops left it;
- ``masked``: ordinary training with :meth:`CompressedModel.enforce` after every optimizer
  step, so pruned weights stay exactly zero (even under momentum and weight decay) and
  values stay representable in their storage dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from operators.datasets import Dataset
from operators.strategy import CompressedModel
from operators.training import train

FINETUNE_METHODS = ("none", "masked")


def check_method(method: str) -> str:
    """``method`` if it is a known fine-tuning method, else ValueError listing them."""
    if method not in FINETUNE_METHODS:
        raise ValueError(
            f"method: unknown fine-tuning method {method!r}; allowed: {', '.join(FINETUNE_METHODS)}"
        )
    return method


def finetune(
    cm: CompressedModel,
    dataset: Dataset,
    *,
    method: str = "masked",
    epochs: float = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Fine-tune ``cm.model`` in place with ``method``; the compression holds throughout."""
    if check_method(method) == "none":
        return
    cm.model.to(device)
    cm.enforce()
    train(
        cm.model,
        dataset,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        after_step=cm.enforce,
        should_stop=should_stop,
        on_progress=on_progress,
    )
