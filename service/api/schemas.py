"""Pydantic schemas of the public API: what jobs, models, trials and errors look like.

The vocabulary is the one of docs/job-spec.md; every model forbids unknown fields, so a typo
is a 422 that names the field instead of a silently ignored option.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.core.db import MAX_ID

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
                "name": "gradual-prune+cluster+fp16",
                "steps": [
                    {
                        "op": "prune",
                        "scope": "global",
                        "sparsity": {"min": 0.9, "max": 0.99},
                        "schedule": {"stages": 2, "ramp": "cubic"},
                    },
                    {"op": "cluster", "bits": {"choices": [3, 4, 5]}},
                    {"op": "quantize", "dtype": "float16"},
                ],
            }
        ]
    },
    "finetune": {
        "method": "masked",
        "epochs": 1,
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
    mu_init: float | None = Field(None, gt=0, description="lc: first penalty mu (1e-2).")
    mu_mult: float | None = Field(
        None, ge=1, description="lc: mu growth per iteration (default: reaches mu = 1.6 at the last iteration)."
    )
    rho_init: float | None = Field(None, gt=0, description="admm: first penalty rho (1e-4).")
    rho_final: float | None = Field(None, gt=0, description="admm: last penalty rho (1e-1).")
    lam: float | None = Field(None, ge=0, description="hspg: group-sparsity weight (1e-3).")


class Rungs(Strict):
    """Successive halving of the fine-tuning: short fine-tunes first, the promising continued."""

    min_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="The lowest rung's fraction of each trial's fine-tuning epochs; rung k runs "
        "min_fraction * eta^k of them (the last rung, 1.0, is full fidelity).",
    )
    eta: int = Field(
        3,
        ge=2,
        le=100,
        description="Of every eta trials finished at a rung, the best one is continued at the "
        "next rung from its own checkpoint, for the epochs that rung adds. Best: the "
        "optimiser's predicted objective at full fidelity times the probability that the "
        "constraints hold there (single objectives with search.low_fidelity_data); else "
        "feasible first by the objective, then the closest to the constraints.",
    )


class Budget(Strict):
    """When the search stops: trials, parallel trials, wall time, fine-tuning epochs."""

    max_trials: int = Field(
        20,
        ge=1,
        le=10000,
        description="Trials in total (new proposals; with rungs, continued trials come on top).",
    )
    max_parallel: int = Field(1, ge=1, le=256, description="Trials evaluated at the same time.")
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Wall time: nothing new (no proposal, no continued rung) starts after this "
        "many minutes since the job started.",
    )
    max_epochs: float | None = Field(
        None,
        gt=0,
        description="Fine-tuning epochs across all trials (each trial's `epochs`, continued "
        "rungs included): nothing new starts once they are spent.",
    )
    rungs: Rungs | None = Field(
        None,
        description='Multi-fidelity search, e.g. {"min_fraction": 0.25, "eta": 3}; null (the '
        "default): every trial fine-tunes fully. Only full-fidelity trials are the best or on "
        "the front.",
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

    model_id: int = Field(
        ge=1, le=MAX_ID, description="A model registered with POST /v1/models."
    )
    dataset: str = Field(
        description="builtin:mnist, builtin:digits, idx:<dir>, npz:<file> (paths inside the "
        "server's data roots).",
        examples=["builtin:mnist"],
    )
    objective: dict[str, Any] = Field(
        description='{"maximize"|"minimize": metric, "constraints": [{"metric", "min"|"max"}]} or '
        '{"pareto": [{"metric", "goal"}], "constraints": [...]}'
    )
    search_space: dict[str, Any] | None = Field(
        None,
        description='{"strategies": [{"name", "steps": [{"op", <param>: value | {"min","max"} | '
        '{"choices"}, "schedule"?: {"stages", "ramp"}, "finetune"?: {...}}]}]}. Omitted: the '
        "service's default space, built from the ops that fit the model's layers (staged pruning "
        "with clustering, one-shot pruning, channel removal, low rank, MPD, each with float16); "
        "the job's JSON then shows the space it searched.",
    )
    finetune: Finetune = Field(default_factory=Finetune)
    budget: Budget = Field(default_factory=Budget)
    search: dict[str, Any] | None = Field(
        None,
        description='How to search: {"method": "bo"} (default: constrained or Pareto Bayesian '
        'optimisation) or {"method": "two-phase"} (Condensa: first the largest strength that '
        "meets the constraints, then the objective within it; one strategy, one range). "
        "Noise-aware settings (bo, single objective): skip_within_noise (true), noise_sigmas "
        "(1.0), near_distance (0.05), min_relative_change (0.05), stop_below_noise (true), "
        "stop_min_trials (10), stop_relative_gain (0.01: a noiseless objective's "
        "convergence threshold, a fraction of its best); low_fidelity_data (true: with "
        "budget.rungs, the shorter fine-tunes are model data too, the fidelity one more GP "
        "input and every prediction made at fidelity 1); the accuracy's noise is the binomial standard error of the "
        "validation split (see docs/job-spec.md, Measurement noise).",
    )
    warm_start: bool = Field(
        False,
        description="A proposal that extends a finished full-fidelity trial (the same steps with "
        "each strength at least as strong, more sparsity or fewer bits, or those steps followed "
        "by more; ops prune, block_prune, cluster, quantize; not with kd) starts from that "
        "trial's checkpoint and names it as its `parent`; a `prune` schedule then ramps on from "
        "the parent's sparsity.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Same seed + same inputs = same proposals.")
    latency_batch_size: int = Field(1, ge=1, le=65536, description="Batch size of latency_ms.")


class ModelPublic(BaseModel):
    """A registered model: where its architecture comes from, its config and its input."""

    id: int
    name: str
    architecture: str = Field(
        description="`source:name`: a zoo name (bare or `zoo:<name>`), `timm:<model_name>`, "
        "`hf:<task>` or `torchvision:<name>`.",
        examples=["timm:resnet18", "hf:image-classification", "lenet-300-100"],
    )
    source: str = Field(description="The model source: zoo, timm, hf, torchvision, ...")
    config: dict[str, Any] = Field(
        description="The source's keyword arguments (zoo, timm, torchvision) or the Hugging "
        "Face config.json object (hf)."
    )
    input_shape: list[int] | None = Field(
        None, description="One sample's shape, e.g. [3, 32, 32], or [128] token ids."
    )
    input_dtype: Literal["float32", "int64"] = Field(
        "float32", description="float32, or int64 for token ids."
    )
    params: int
    size_bytes: int = Field(description="Bytes of the uploaded weights file.")
    created_at: datetime | None = None


class AttemptPublic(BaseModel):
    """An earlier attempt of a trial, and how it ended."""

    attempt: int
    worker: str | None = Field(
        None, description="The pool process that ran it, hostname:pid.", examples=["gpu-3:4242"]
    )
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = Field(
        description="How it ended, e.g. the lease expired because its worker was lost.",
        examples=["attempt 1: lease expired (worker gpu-3:4242 lost)"],
    )


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
    error: str | None = Field(None, description="Why the last attempt failed, if it did.")
    attempt: int
    attempts: list[AttemptPublic] = Field(
        default_factory=list,
        description="The attempts before the current one (re-runs after a lost worker), oldest "
        "first; the current attempt's failure is `error`.",
    )
    worker: str | None = Field(
        None, description="The pool process running or that ran this attempt, hostname:pid."
    )
    progress: float = Field(description="Fraction 0..1 of the trial's fine-tuning done.")
    stage: str | None = Field(
        None,
        description="What a running trial is doing: load, apply, finetune, save or measure.",
        examples=["finetune"],
    )
    epoch: float | None = Field(
        None,
        description="Fine-tuning epochs done so far (progress times the trial's `epochs`).",
    )
    epochs: float | None = Field(
        None,
        description="The fine-tuning epochs this trial runs (what budget.max_epochs counts); a "
        "continued rung runs only the epochs its rung adds.",
    )
    fidelity: float = Field(
        1.0,
        description="The fraction of the strategy's full fine-tuning its weights have had; only "
        "1.0 is a final result (the best and the front use no other).",
    )
    rung: int = Field(
        0, description="The successive-halving rung: 0 a new proposal, k + 1 continued."
    )
    parent: int | None = Field(
        None,
        description="The trial id whose checkpoint this one starts from: the rung-lower trial "
        "it continues (same candidate, `rung` one higher), or a warm start's parent.",
    )
    device: str | None = None
    checkpoint_url: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Progress(BaseModel):
    trials_done: int = Field(
        description="Trials finished (succeeded, failed or cancelled); continued rungs are not "
        "counted (they are not new trials)."
    )
    trials_total: int = Field(description="The trial budget.")
    running: int
    queued: int
    fraction: float
    eta_seconds: float | None = Field(
        None,
        description="Estimated seconds until the job finishes: the running trials' remainder, "
        "the queued trials, the proposals the trial budget has left and (with `rungs`) the "
        "continuations to come, each of the mean duration of its rung's finished trials, laid "
        "out on `max_parallel` lanes; nothing new starts once `max_minutes` or `max_epochs` is "
        "spent. Null before any trial finished, 0 once the job is finished.",
    )


class JobLinks(BaseModel):
    """URLs of the job's pictures and report page (relative to the server)."""

    trials: str = Field(description="Every trial, as JSON.", examples=["/v1/jobs/1/trials"])
    pareto: str = Field(description="The Pareto front, as JSON.", examples=["/v1/jobs/1/pareto"])
    pareto_svg: str = Field(
        description="The Pareto picture (SVG): trials, baseline, constraint bound, front.",
        examples=["/v1/jobs/1/pareto.svg"],
    )
    pareto_png: str = Field(
        description="The same picture as PNG.", examples=["/v1/jobs/1/pareto.png"]
    )
    report: str = Field(
        description="An HTML report: interactive front, trials table, the search's reasons, "
        "the best checkpoint's download link.",
        examples=["/v1/jobs/1/report"],
    )


class JobPublic(BaseModel):
    """A job's state, progress and best trial so far."""

    id: int
    model_id: int
    state: JobState
    progress: Progress
    best: TrialPublic | None = Field(None, description="Best feasible trial so far.")
    closest: TrialPublic | None = Field(
        None,
        description="While no trial is feasible: the finished trial nearest to the constraints "
        "(smallest violation, each bound's excess relative to the bound), so you know what to "
        "relax; null once a trial is feasible.",
    )
    links: JobLinks | None = Field(None, description="Where to see the job's results.")
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

