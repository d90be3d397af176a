"""Pydantic schemas of the public API: what jobs, models, trials and errors look like.

The vocabulary is the one of docs/job-spec.md; every model forbids unknown fields, so a typo
is a 422 that names the field instead of a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["queued", "running", "succeeded", "failed", "cancelled"]

# The documented example is the demo's job (service/demo.py submits it with its own model id).
EXAMPLE_JOB = {
    "model_id": 1,
    "dataset": "builtin:mnist",
    "objective": {
        "maximize": "compression_ratio",
        "constraints": [{"metric": "accuracy_drop", "max": 0.01}],
    },
    "search_space": {
        "strategies": [
            {
                "name": "prune+fp16",
                "steps": [
                    {"op": "prune", "scope": "global", "sparsity": {"min": 0.8, "max": 0.985}},
                    {"op": "quantize", "dtype": "float16"},
                ],
            }
        ]
    },
    "finetune": {
        "method": "masked",
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 128,
        "schedule": "cosine",
    },
    "budget": {"max_trials": 10, "max_parallel": 1},
    "seed": 0,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Finetune(Strict):
    """How each candidate recovers accuracy after compression."""

    method: str = Field(
        "masked",
        description="none, masked, kd (distillation from the uncompressed model), lc "
        "(Condensa's learning-compression), admm (ADMM, then masked), hspg (group-sparse "
        "training that removes conv filters).",
    )
    epochs: float = Field(1.0, ge=0, le=1000, description="Epochs of fine-tuning (may be fractional).")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate (Adam).")
    batch_size: int = Field(128, ge=1, le=65536)
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="sgd uses momentum 0.9.")
    weight_decay: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the fine-tuning run."
    )
    temperature: float | None = Field(None, gt=0, description="kd: softmax temperature (4).")
    alpha: float | None = Field(
        None, ge=0, le=1, description="kd: weight of the distillation term (0.9)."
    )
    iterations: int | None = Field(
        None, ge=1, le=10000, description="lc / admm: outer iterations (10)."
    )
    mu_init: float | None = Field(None, gt=0, description="lc: first penalty mu (1e-3).")
    mu_mult: float | None = Field(None, ge=1, description="lc: mu growth per iteration (1.1).")
    rho_init: float | None = Field(None, gt=0, description="admm: first penalty rho (1e-4).")
    rho_final: float | None = Field(None, gt=0, description="admm: last penalty rho (1e-1).")
    lam: float | None = Field(None, ge=0, description="hspg: group-sparsity weight (1e-3).")


class Budget(Strict):
    """When the search stops: trials, parallel trials, wall time."""

    max_trials: int = Field(20, ge=1, le=10000, description="Trials in total.")
    max_parallel: int = Field(1, ge=1, le=256, description="Trials evaluated at the same time.")
    max_minutes: float | None = Field(
        None, gt=0, description="No new trials are proposed after this many minutes."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many finished trials without improvement."
    )
    min_improvement: float = Field(
        0.0, ge=0, description="Relative gain of the best value (or hypervolume) that counts."
    )


class JobCreate(Strict):
    """A compression job: which model, on which data, optimising what, over which strategies."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_JOB]})

    model_id: int = Field(description="A model registered with POST /v1/models.")
    dataset: str = Field(
        description="builtin:mnist, builtin:digits, idx:<dir>, npz:<file> (paths inside the "
        "server's data roots).",
        examples=["builtin:mnist"],
    )
    objective: dict[str, Any] = Field(
        description='{"maximize"|"minimize": metric, "constraints": [{"metric", "min"|"max"}]} or '
        '{"pareto": [{"metric", "goal"}], "constraints": [...]}'
    )
    search_space: dict[str, Any] = Field(
        description='{"strategies": [{"name", "steps": [{"op", <param>: value | {"min","max"} | '
        '{"choices"}}]}]}'
    )
    finetune: Finetune = Field(default_factory=Finetune)
    budget: Budget = Field(default_factory=Budget)
    search: dict[str, Any] | None = Field(
        None,
        description='How to search: {"method": "bo"} (default: constrained or Pareto Bayesian '
        'optimisation) or {"method": "two-phase"} (Condensa: first the largest strength that '
        "meets the constraints, then the objective within it; one strategy, one range).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Same seed + same inputs = same proposals.")
    latency_batch_size: int = Field(1, ge=1, le=65536, description="Batch size of latency_ms.")


class ModelPublic(BaseModel):
    id: int
    name: str
    architecture: str
    config: dict[str, Any]
    params: int
    size_bytes: int = Field(description="Bytes of the uploaded weights file.")
    created_at: datetime | None = None


class TrialPublic(BaseModel):
    """One evaluated (or queued) candidate."""

    id: int
    job_id: int
    number: int
    state: TrialState
    strategy: str
    params: dict[str, Any]
    steps: list[dict[str, Any]]
    metrics: dict[str, Any] | None = Field(None, description="The job-spec metrics, measured.")
    feasible: bool | None = Field(None, description="Whether the metrics meet the constraints.")
    reason: dict[str, Any] | None = Field(None, description="Why the optimiser proposed it.")
    error: str | None = None
    attempt: int
    progress: float
    device: str | None = None
    checkpoint_url: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Progress(BaseModel):
    trials_done: int = Field(description="Trials finished (succeeded, failed or cancelled).")
    trials_total: int = Field(description="The trial budget.")
    running: int
    queued: int
    fraction: float


class JobPublic(BaseModel):
    """A job's state, progress and best trial so far."""

    id: int
    model_id: int
    state: JobState
    progress: Progress
    best: TrialPublic | None = Field(None, description="Best feasible trial so far.")
    baseline: dict[str, Any] | None = Field(None, description="Metrics of the uncompressed model.")
    stop_reason: str | None = None
    error: str | None = None
    spec: dict[str, Any]
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobAccepted(BaseModel):
    id: int
    state: JobState
    location: str


class ParetoPublic(BaseModel):
    """The non-dominated feasible trials for the objective's metrics."""

    job_id: int
    metrics: list[dict[str, str]] = Field(description="[{metric, goal}] the front is taken over.")
    trials: list[TrialPublic]

