"""Fine-tuning a compressed model to recover accuracy while its compression is held.

``method`` names how (the job spec's ``finetune.method``):

- ``none``: leave the model as the ops left it;
- ``masked``: ordinary training with :meth:`CompressedModel.enforce` after every optimizer
  step, so pruned weights stay exactly zero (even under momentum and weight decay), values
  stay representable in their storage dtype, and every op's structure holds: gradients of
  tied weights are tied (:meth:`~operators.core.model.Constraint.grad`: a cluster's members
  move as their centroid, a unified block as its one magnitude) and the projection runs
  after each step (int8 grids with their fixed scales);
- ``kd``: ``masked`` with the loss of :func:`operators.train.compressors.kd_loss` against the
  uncompressed model (``cm.teacher``), parameters ``temperature`` (4) and ``alpha`` (0.9);
- ``lc``: Condensa's learning-compression (:class:`operators.train.compressors.LearningCompression`)
  whose C-step re-applies the strategy's non-structural ops to the current weights, so it
  works with every such op (masks and codebooks are recomputed, not held); ``iterations``
  (10), ``mu_init`` (1e-2), ``mu_mult`` (default: the growth that reaches ``mu`` = 1.6 at
  the last iteration, :func:`lc_mu_mult`; Condensa's recipe is 1e-3 and 1.1, which at the
  budgets measured here, 4,300 and 17,000 minibatches on LeNet-300-100 at density 0.02, lost
  4.3 and 1.2 points where 1e-2 and 1.2 lost 2.0 and 1.1, but at Condensa's own 66,000
  it lost 0.09 where the default lost 0.83: bench/README.md, L-C). The L-steps share the
  ``epochs`` of minibatches, the first one (which recovers from the direct compression) 45% of them as in
  Condensa's recipe (:func:`lc_steps`); each is SGD with Nesterov momentum 0.95 on the loss
  plus the penalty (Condensa's L-step), the learning rate decaying from ``lr`` (Condensa: 0.01)
  to ``lr/100``; the best compressed iterate by validation loss is kept with its structure;
- ``admm``: ADMM (:class:`operators.train.compressors.ADMM`) toward the same projection over the
  first half of ``epochs`` (``iterations`` 10, ``rho_init`` 1e-4 to ``rho_final`` 1e-1;
  each W-step SGD with momentum 0.9 on the loss plus the penalty's gradient,
  :func:`operators.train.compressors.admm_w_step`), then the hard projection and ``masked``
  fine-tuning for the second half;
- ``hspg``: group-sparse training of conv filters with :class:`operators.train.compressors.HSPG`
  (``lam`` 1e-3; prox-SG for the first half, half-space steps after) and then the physical
  removal of the filters it zeroed. Needs a model without masks or packing (use it with
  structural ops only, or an empty strategy).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from operators.core.model import CompressedModel
from operators.core.modes import eval_mode
from operators.core.strategy import Compose
from operators.data.datasets import Dataset
from operators.ops.channels.graph import remove_named_channels
from operators.train.compressors import (
    ADMM,
    HSPG,
    LearningCompression,
    PenaltySGD,
    admm_w_step,
    hspg_param_groups,
    kd_loss,
    zero_groups,
)
from operators.train.loop import Cancelled, train

FINETUNE_METHODS = ("none", "masked", "kd", "lc", "admm", "hspg")
METHOD_PARAMS: dict[str, dict[str, float | int | None]] = {
    "kd": {"temperature": 4.0, "alpha": 0.9},
    "lc": {"iterations": 10, "mu_init": 1e-2, "mu_mult": None},  # None: reach LC_MU_FINAL
    "admm": {"iterations": 10, "rho_init": 1e-4, "rho_final": 1e-1},
    "hspg": {"lam": 1e-3},
}
METHOD_FIELDS = tuple(dict.fromkeys(k for params in METHOD_PARAMS.values() for k in params))
LC_MU_FINAL = 1.6  # lc's last mu when mu_mult is not given (1e-2 x 1.2^28, measured on MNIST)
LC_FIRST_SHARE = 0.45  # Condensa's LeNet-300-100 run: 30,000 of about 66,000 minibatches
VALIDATION_SAMPLES = 2048  # L-C scores its iterates on at most this many validation samples


def check_method(method: str) -> str:
    """``method`` if it is a known fine-tuning method, else ValueError listing them."""
    if method not in FINETUNE_METHODS:
        raise ValueError(
            f"method: unknown fine-tuning method {method!r}; allowed: {', '.join(FINETUNE_METHODS)}"
        )
    return method


def method_params(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """``method``'s parameters: the given ones (None = default) checked, defaults filled in."""
    defaults = METHOD_PARAMS.get(method, {})
    for key, value in given.items():
        if value is not None and key not in defaults:
            users = [m for m, p in METHOD_PARAMS.items() if key in p]
            raise ValueError(f"{key}: used only by method {' / '.join(users)}, not {method}")
    out = {k: given.get(k) if given.get(k) is not None else v for k, v in defaults.items()}
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "temperature": (lambda v: v > 0, "> 0"),
        "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "iterations": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        "mu_init": (lambda v: v > 0, "> 0"),
        "mu_mult": (lambda v: v >= 1, ">= 1"),
        "rho_init": (lambda v: v > 0, "> 0"),
        "rho_final": (lambda v: v >= out.get("rho_init", 0), ">= rho_init"),
        "lam": (lambda v: v >= 0, ">= 0"),
    }
    for key, value in out.items():
        if value is None and defaults[key] is None:
            continue  # derived when the run starts (lc's mu_mult)
        ok, wanted = checks[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"{key}: must be {wanted}, got {value!r}")
    return out


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
    temperature: float | None = None,
    alpha: float | None = None,
    iterations: int | None = None,
    mu_init: float | None = None,
    mu_mult: float | None = None,
    rho_init: float | None = None,
    rho_final: float | None = None,
    lam: float | None = None,
) -> None:
    """Fine-tune ``cm.model`` in place with ``method``; the compression holds throughout.

    The method-specific parameters (``temperature`` ... ``lam``, see the module docstring)
    may only be given to the method that uses them; None means its default.
    """
    check_method(method)
    params = method_params(method, {
        "temperature": temperature, "alpha": alpha, "iterations": iterations,
        "mu_init": mu_init, "mu_mult": mu_mult, "rho_init": rho_init, "rho_final": rho_final,
        "lam": lam,
    })  # fmt: skip
    if method == "none":
        return
    cm.model.to(device)
    cm.enforce()
    run = {
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "device": device,
        "optimizer": optimizer, "weight_decay": weight_decay, "schedule": schedule,
        "should_stop": should_stop, "on_progress": on_progress,
    }  # fmt: skip
    if method == "masked":
        masked_train(cm, dataset, **run)
    elif method == "kd":
        masked_train(cm, dataset, loss=distillation(cm, device, **params), **run)
    elif method in ("lc", "admm"):
        _augmented_lagrangian(cm, dataset, method, params, run)
    else:
        _hspg(cm, dataset, params["lam"], run)


def masked_train(cm: CompressedModel, dataset: Dataset, **kwargs: Any) -> None:
    """:func:`operators.train.loop.train` with every constraint's gradient tying and the
    projection after each step (``kwargs`` go to ``train``)."""
    params = dict(cm.model.named_parameters())
    handles = [
        params[name].register_hook(constraint.grad)
        for name, constraint in cm.constraints.items()
        if name in params
    ]
    try:
        train(cm.model, dataset, after_step=cm.enforce, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    cm.enforce()


def distillation(
    cm: CompressedModel, device: str | torch.device, temperature: float, alpha: float
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The KD training loss against a frozen copy of ``cm.teacher`` on ``device``."""
    if cm.teacher is None:
        raise ValueError("method kd: the compressed model has no teacher (the uncompressed model)")
    teacher = copy.deepcopy(cm.teacher).to(device).eval()

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(x)
        return kd_loss(model(x), target, y, temperature, alpha)

    return loss


# -- L-C and ADMM: projections that re-run the strategy -----------------------------------------


class StrategyProjection:
    """The Euclidean-projection stand-in for L-C / ADMM: re-apply the strategy's
    non-structural ops to given weights. Remembers the state (masks, codebooks, ...) of
    every call so the chosen iterate's structure can be adopted."""

    STATE = ("masks", "value_dtypes", "blocks", "packing", "constraints")

    def __init__(self, cm: CompressedModel) -> None:
        self.cm = cm
        self.ops = [op for op in cm.ops if not op.STRUCTURAL]
        if not self.ops:
            raise ValueError("lc / admm: the strategy has no op to project onto")
        touched = set(cm.masks) | set(cm.value_dtypes) | set(cm.constraints)
        self.names = [n for n, _ in cm.model.named_parameters() if n in touched]
        self.last: CompressedModel | None = None
        self.states: dict[int, CompressedModel] = {}

    def __call__(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(self.cm.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        projected = Compose(self.ops).apply(model, example_input=self.cm.example_input)
        out = dict(projected.model.named_parameters())
        self.last = projected
        return {name: out[name].detach() for name in tensors}

    def record(self, iteration: int, theta: dict[str, torch.Tensor]) -> None:
        """``on_iteration`` hook of L-C: keep the structure of iterate ``iteration``."""
        self.states[iteration] = self.last

    def adopt(self, source: CompressedModel | None) -> None:
        """Give ``cm`` the structure of ``source`` (an iterate's compressed copy)."""
        if source is None:
            return
        for key in self.STATE:
            setattr(self.cm, key, getattr(source, key))
        self.cm.report.append({"finetune": "projection", "ops": [op.name for op in self.ops]})


def _batch_losses(
    dataset: Dataset, batch_size: int, seed: int, device: str | torch.device, total: int,
    should_stop: Callable[[], bool] | None, on_progress: Callable[[float], None] | None,
) -> Callable[[nn.Module], torch.Tensor]:  # fmt: skip
    """``batch_loss(model)``: cross-entropy of the next seeded minibatch (polls the hooks)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset.y_train)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(n, generator=generator)
            yield from order.split(batch_size)

    stream = batches()
    done = [0]

    def batch_loss(model: nn.Module) -> torch.Tensor:
        if should_stop is not None and done[0] % 20 == 0 and should_stop():
            raise Cancelled(f"training stopped at step {done[0]} of {total}")
        done[0] += 1
        if on_progress is not None and done[0] % 20 == 0:
            on_progress(min(1.0, done[0] / total))
        idx = next(stream)
        x, y = dataset.x_train[idx].to(device), dataset.y_train[idx].to(device)
        return F.cross_entropy(model(x), y)

    return batch_loss


def validation_loss(dataset: Dataset, device: str | torch.device) -> Callable[[nn.Module], float]:
    """``evaluate(model)``: cross-entropy on (at most 2048 of) the validation samples."""
    x, y = dataset.x_val[:VALIDATION_SAMPLES], dataset.y_val[:VALIDATION_SAMPLES]

    def evaluate(model: nn.Module) -> float:
        with eval_mode(model), torch.no_grad():
            return float(F.cross_entropy(model(x.to(device)), y.to(device)))

    return evaluate


def lc_steps(total: int, iterations: int) -> tuple[int, int]:
    """``(first, per_step)``: minibatches of L-C's first L-step and of each later one, ``total``
    in all over the ``iterations - 1`` L-steps. As in Condensa's recipe (30,000 minibatches
    for the first L-step of 30 L-C iterations, about 66,000 in all) the first one, which
    recovers from the direct compression, gets :data:`LC_FIRST_SHARE` of the budget."""
    l_steps = max(1, iterations - 1)
    if l_steps == 1:
        return total, total
    first = max(1, round(LC_FIRST_SHARE * total))
    return first, max(1, (total - first) // (l_steps - 1))


def lc_mu_mult(mu_init: float, iterations: int) -> float:
    """The growth of mu per L-C iteration that takes it from ``mu_init`` (iteration 1) to
    :data:`LC_MU_FINAL` at the last iteration (1 when it starts there or above)."""
    if iterations <= 2 or mu_init >= LC_MU_FINAL:
        return 1.0
    return (LC_MU_FINAL / mu_init) ** (1 / (iterations - 2))


def _augmented_lagrangian(
    cm: CompressedModel, dataset: Dataset, method: str, params: dict, run: dict
) -> None:
    steps_per_epoch = math.ceil(len(dataset.y_train) / run["batch_size"])
    share = 1.0 if method == "lc" else 0.5
    total = max(1, math.ceil(share * run["epochs"] * steps_per_epoch))
    project = StrategyProjection(cm)
    batch_loss = _batch_losses(dataset, run["batch_size"], run["seed"], run["device"], total,
                               run["should_stop"], run["on_progress"])  # fmt: skip
    n = params["iterations"]
    if method == "lc":
        first, per_step = lc_steps(total, n)
        lc = LearningCompression(
            project, project.names, n, params["mu_init"],
            params["mu_mult"] or lc_mu_mult(params["mu_init"], n),
            l_step=PenaltySGD(steps=per_step, lr=run["lr"], lr_end=run["lr"] / 100, momentum=0.95,
                              penalty="gradient", nesterov=True),
            first_l_steps=first,
        )  # fmt: skip
        result = lc.run(cm.model, batch_loss, validation_loss(dataset, run["device"]), project.record)
        project.adopt(project.states[result.best_iteration])
        cm.enforce()
        return
    admm = ADMM(project, project.names, n, params["rho_init"], params["rho_final"],
                admm_w_step(steps=max(1, total // n), lr=run["lr"]))  # fmt: skip
    admm.run(cm.model, batch_loss)
    project.adopt(project.last)  # the final hard projection's structure
    masked_train(cm, dataset, **{**run, "epochs": run["epochs"] / 2})


def _hspg(cm: CompressedModel, dataset: Dataset, lam: float, run: dict) -> None:
    if cm.masks or cm.packing or cm.constraints:
        raise ValueError("method hspg: needs a model without masks or packing (structural ops only)")
    steps_per_epoch = math.ceil(len(dataset.y_train) / run["batch_size"])
    prox = math.ceil(run["epochs"] * steps_per_epoch / 2)

    def build(model: nn.Module) -> torch.optim.Optimizer:
        return HSPG(hspg_param_groups(model), lr=run["lr"], lam=lam, prox_steps=prox, momentum=0.9)

    train(cm.model, dataset, build_optimizer=build, **run)
    removed = remove_named_channels(cm, zero_groups(cm.model))
    cm.enforce()
    cm.report.append({"finetune": "hspg", "removed_channels": removed,
                      "params": sum(p.numel() for p in cm.model.parameters())})  # fmt: skip
