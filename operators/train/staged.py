"""Staged strategies: steps that carry their own fine-tuning, and strengths ramped on a schedule.

A strategy is a list of steps (:mod:`operators.core.strategy`). Two keys turn it into stages,
each compressing further and then fine-tuning:

- ``"finetune": {...}`` on a step: after that step (and the steps before it not yet
  fine-tuned), fine-tune with these settings (the keys of the job's ``finetune``: ``method``,
  ``epochs``, ``lr``, ...; unspecified keys come from the job's);
- ``"schedule": {"stages": n, "ramp": "cubic" | "linear"}`` on a step whose op has a strength
  (``prune`` / ``block_prune`` ``sparsity``, ``neuron_prune`` / ``filter_prune`` ``ratio``): the
  strength is reached in ``n`` stages, ``s_t = s (1 - (1 - t/n)^3)`` (Zhu and Gupta's gradual
  pruning) or ``s t / n``, with fine-tuning after each stage (the step's ``finetune``, else the
  job's). Where the model already has some of the strength when the schedule begins
  (:meth:`~operators.core.op.Op.start_strength`: a ``prune`` on weights already partly zero,
  as a warm start's parent's are), the ramp starts there: ``s_0 + (s - s_0) f_t``, where
  ``f_t`` is the ramp above for ``s = 1``, so a warm start prunes on from its parent's sparsity
  instead of spending its first stages below it.

After the last step the job's fine-tuning runs, unless the last step carried its own. So Deep
Compression's order, prune, retrain, prune more, retrain, cluster, lower precision, retrain,
is one strategy::

    [{"op": "prune", "sparsity": 0.98, "schedule": {"stages": 2}},
     {"op": "cluster", "bits": 3}, {"op": "quantize", "dtype": "float16"}]

A strategy without these keys is one stage: every op, then the job's fine-tuning, exactly as
before. :func:`run_strategy` runs a strategy; :func:`validate_strategy` checks one without
running it (what the API does at submission).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from operators.core.model import CompressedModel
from operators.core.op import Op, check_choice, check_int
from operators.core.strategy import Compose, extend, parse_steps
from operators.data.datasets import Dataset
from operators.train.finetune import METHOD_FIELDS, check_method, finetune, method_params

STAGE_KEYS = ("finetune", "schedule")
RAMPS = ("cubic", "linear")
FINETUNE_KEYS = (
    "method", "epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", *METHOD_FIELDS
)
MAX_STAGES = 20


@dataclass
class Stage:
    """Ops applied together, then one fine-tuning (``finetune`` overrides the job's; None: the
    job's). A stage of a schedule has ``ramp``: the scheduled op at its full strength and the
    ramp's fractions of that strength before and after this stage (its last op is that op at
    the stage's strength, planned from strength 0)."""

    ops: list[Op]
    finetune: dict[str, Any] | None = None
    ramp: tuple[Op, float, float] | None = None

    def ops_from(self, start: float) -> list[Op]:
        """The stage's ops with its ramp starting at strength ``start`` (what the model already
        has, :meth:`Op.start_strength`) instead of 0: ``start + (s - start) * fraction``, so
        every stage at the full strength ``s`` when ``start`` is at least ``s``. Unchanged
        without a ramp or when ``start`` is 0."""
        if self.ramp is None or start <= 0:
            return self.ops
        op, before, after = self.ramp
        full = getattr(op, op.STRENGTH)
        base = min(start, full)
        return [*self.ops[:-1], op.staged(base + (full - base) * before,
                                          base + (full - base) * after)]  # fmt: skip


def ramp(strength: float, stages: int, kind: str = "cubic") -> list[float]:
    """The strength after each of ``stages`` stages, ending at ``strength``."""
    if kind == "linear":
        return [strength * t / stages for t in range(1, stages + 1)]
    return [strength * (1 - (1 - t / stages) ** 3) for t in range(1, stages + 1)]


def _check_finetune(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: must be an object of fine-tuning settings")
    for key in spec:
        if key not in FINETUNE_KEYS:
            raise ValueError(f"{where}.{key}: unknown; allowed: {', '.join(FINETUNE_KEYS)}")
    spec = dict(spec)
    method = spec.get("method")
    if method is not None:
        try:
            check_method(method)
            method_params(method, {k: spec.get(k) for k in METHOD_FIELDS})
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
    epochs = spec.get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 <= epochs <= 1000:
        raise ValueError(f"{where}.epochs: must be a number in [0, 1000], got {epochs!r}")
    return spec


def _check_schedule(spec: Any, op: Op, where: str) -> tuple[int, str]:
    if op.STRENGTH is None:
        raise ValueError(f"{where}: {op.name} has no strength to ramp; schedules apply to ops with one")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: must be an object such as {{'stages': 3, 'ramp': 'cubic'}}")
    for key in spec:
        if key not in ("stages", "ramp"):
            raise ValueError(f"{where}.{key}: unknown; allowed: stages, ramp")
    stages = check_int(f"{where}.stages", spec.get("stages", 3), 1, MAX_STAGES)
    kind = check_choice(f"{where}.ramp", spec.get("ramp", "cubic"), RAMPS)
    return stages, kind


def plan_stages(steps: Any) -> list[Stage]:
    """The stages of ``steps`` (ValueError naming the step and key at fault)."""
    if not isinstance(steps, list):
        raise ValueError(f"steps: must be a list of steps, got {type(steps).__name__}")
    plain = [
        {k: v for k, v in step.items() if k not in STAGE_KEYS} if isinstance(step, Mapping) else step
        for step in steps
    ]
    ops = parse_steps(plain)
    stages: list[Stage] = []
    pending: list[Op] = []
    for i, (step, op) in enumerate(zip(steps, ops, strict=True)):
        tune = step.get("finetune")
        if tune is not None:
            tune = _check_finetune(tune, f"steps[{i}].finetune")
        if "schedule" in step:
            n, kind = _check_schedule(step["schedule"], op, f"steps[{i}].schedule")
            strength, before = getattr(op, op.STRENGTH), 0.0
            for after in ramp(1.0, n, kind):
                staged = op.staged(strength * before, strength * after)
                stages.append(Stage([*pending, staged], tune, ramp=(op, before, after)))
                pending, before = [], after
        elif tune is not None:
            stages.append(Stage([*pending, op], tune))
            pending = []
        else:
            pending.append(op)
    if pending or not stages:
        stages.append(Stage(pending))
    return stages


def validate_strategy(steps: Any) -> None:
    """Raise ValueError (naming the step, op, parameter or stage key) if ``steps`` is invalid."""
    plan_stages(steps)


def run_strategy(
    model: nn.Module,
    steps: list[dict[str, Any]],
    dataset: Dataset,
    finetune_spec: Mapping[str, Any],
    *,
    example_input: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> CompressedModel:
    """Apply ``steps`` stage by stage to a copy of ``model``, fine-tuning after each stage;
    the compressed model's report lists every op and every fine-tuning run. ``on_stage``
    hears ``apply`` and ``finetune`` as each begins (``apply 2/3`` ... with several stages)."""
    stages = plan_stages(steps)
    cm = Compose([]).apply(model, example_input=example_input)

    def announce(name: str, index: int) -> None:
        if on_stage is not None:
            on_stage(name if len(stages) == 1 else f"{name} {index + 1}/{len(stages)}")

    start = 0.0
    for index, stage in enumerate(stages):
        announce("apply", index)
        if stage.ramp is not None and stage.ramp[1] == 0.0:  # a schedule begins
            start = stage.ramp[0].start_strength(cm)
        extend(cm, stage.ops_from(start))
        spec = {**dict(finetune_spec), **(stage.finetune or {})}
        method = spec.pop("method", "masked")
        announce("finetune", index)

        def progress(fraction: float, index: int = index) -> None:
            if on_progress is not None:
                on_progress((index + fraction) / len(stages))

        finetune(cm, dataset, method=method, seed=seed + index, device=device,
                 should_stop=should_stop, on_progress=progress, **spec)  # fmt: skip
        if len(stages) > 1:
            cm.report.append({"stage": index + 1, "of": len(stages), "finetune": method,
                              "epochs": spec.get("epochs", 1)})  # fmt: skip
    return cm
