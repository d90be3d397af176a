"""Multi-fidelity search (``budget.rungs``) against single fidelity: how soon each finds the
best the single-fidelity search finds, through the real HTTP API, over several seeds.

    .venv/bin/python -m bench.fidelity --seeds 5
    .venv/bin/python -m bench.fidelity --problem mnist --seeds 5 --finetune-epochs 1 \
        --max-drop 0.01 --out bench/fidelity/results-mnist.json

``--problem mnist`` runs the same on LeNet-300-100 (784 inputs) and ``builtin:mnist`` (55,000
training and 5,000 validation images, baseline 4 epochs, batch 128), where a trial's
fine-tuning outweighs its fixed costs; the steps below describe the digits problem.

1. Baseline: LeNet-300-100 (64 inputs) trained on ``builtin:digits`` (1,437 training, 360
   validation images), Adam lr 2e-3, ``--epochs`` (30), cached under ``bench/.cache/``.
2. Per seed, two jobs on an embedded server (SQLite, in-process worker), one after the other,
   both with **no ``search_space``** (the service's default space), maximise
   ``compression_ratio`` subject to ``accuracy_drop <= --max-drop`` (0.02: 360 validation
   images have a standard error near one point), masked fine-tuning ``--finetune-epochs`` per
   stage:

   * single fidelity: ``max_trials`` = ``--trials`` (12), every trial fine-tuned fully;
   * multi-fidelity: ``budget.rungs`` ``{"min_fraction": --min-fraction (1/9), "eta": 3}``,
     ``max_trials`` 1000 and ``max_minutes`` = the single-fidelity job's wall time (so it
     can never take longer).

3. For each: the wall time (the job's ``started_at`` to ``finished_at``), the best feasible full-fidelity ratio, and from the trials' finish
   times the first moment the multi-fidelity job had a full-fidelity feasible trial at least
   as good as the single-fidelity job's best (``reach_s``; ``null`` if never). The score is
   ``reach_s`` / the single-fidelity job's wall time, median over seeds (target: <= 1/3).
   Also each job's best by a third of the single job's wall time (``*_best_at_third``).

Convergence stopping is off in both (``stop_below_noise`` false), so each runs its budget.
Writes ``bench/fidelity/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from bench.embedded import embedded_api
from operators import build_model, load_dataset, train

CACHE = Path(__file__).resolve().parents[1] / ".cache"
OUT = Path(__file__).with_name("results.json")
ARCH = "lenet-300-100"


class Problem(NamedTuple):
    """A ``--problem``: the dataset, the model's config, the baseline's epochs and the
    trials' batch size. On digits each trial's fixed costs (the ask, saving, measuring)
    outweigh its fine-tuning; on MNIST (55k training images) the fine-tuning dominates, as in
    real jobs."""

    dataset: str
    config: dict
    epochs: float
    batch_size: int


PROBLEMS = {
    "digits": Problem("builtin:digits", {"in_features": 64, "num_classes": 10}, 30.0, 64),
    "mnist": Problem("builtin:mnist", {}, 4.0, 128),
}


def baseline(problem: str, epochs: float | None = None) -> Path:
    """LeNet-300-100 trained on the problem's dataset once (cached); the safetensors path."""
    spec = PROBLEMS[problem]
    epochs = spec.epochs if epochs is None else epochs
    path = CACHE / f"fidelity-{problem}-e{epochs}.safetensors"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build_model(ARCH, spec.config)
        train(model, load_dataset(spec.dataset), epochs=epochs, lr=2e-3,
              batch_size=spec.batch_size, seed=0)  # fmt: skip
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _seconds(stamp: str | None, start: float) -> float | None:
    return None if not stamp else datetime.fromisoformat(stamp).timestamp() - start


def run_job(api: Any, model_id: int, seed: int, budget: dict, args: argparse.Namespace) -> dict:
    """Submit one job, wait for it; its wall time, best and full-fidelity feasible trials."""
    spec = {
        "model_id": model_id, "dataset": PROBLEMS[args.problem].dataset, "seed": seed,
        "objective": {"maximize": "compression_ratio",
                      "constraints": [{"metric": "accuracy_drop", "max": args.max_drop}]},
        "finetune": {"method": "masked", "epochs": args.finetune_epochs, "lr": 1e-3,
                     "batch_size": PROBLEMS[args.problem].batch_size},
        "budget": {"max_parallel": 1, **budget},
        "search": {"stop_below_noise": False},
    }  # fmt: skip
    job = api.wait(api.submit(spec)["id"])
    start = datetime.fromisoformat(job["started_at"]).timestamp()
    wall = _seconds(job["finished_at"], start)
    found, record = [], []
    for t in api.trials(job["id"]):
        metrics = t.get("metrics") or {}
        if t["state"] == "succeeded" and t.get("fidelity", 1.0) >= 1.0 and t.get("feasible"):
            found.append((_seconds(t["finished_at"], start), metrics["compression_ratio"]))
        record.append({
            "number": t["number"], "rung": t.get("rung", 0), "fidelity": t.get("fidelity"),
            "parent": t.get("parent"), "strategy": t["strategy"], "params": t["params"],
            "state": t["state"], "feasible": t.get("feasible"),
            "ratio": metrics.get("compression_ratio"), "drop": metrics.get("accuracy_drop"),
            "started_s": _seconds(t.get("started_at"), start),
            "finished_s": _seconds(t.get("finished_at"), start),
        })  # fmt: skip
    best = job.get("best") or {}
    return {
        "wall_s": round(wall, 1), "trials": len(api.trials(job["id"])),
        "stop_reason": job.get("stop_reason"),
        "best_ratio": (best.get("metrics") or {}).get("compression_ratio"),
        "feasible_full": sorted(found), "trial_records": record,
    }  # fmt: skip


def best_by(found: list[tuple[float, float]], seconds: float) -> float | None:
    """The best full-fidelity feasible ratio finished by ``seconds`` (None: none yet)."""
    return max((ratio for s, ratio in found if s <= seconds), default=None)


def reach(found: list[tuple[float, float]], target: float | None) -> float | None:
    """The first finish time of a trial at least ``target`` (None: never, or no target)."""
    if target is None:
        return None
    return next((s for s, ratio in found if ratio >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--finetune-epochs", type=float, default=3.0)
    parser.add_argument("--min-fraction", type=float, default=1 / 9)
    parser.add_argument("--max-drop", type=float, default=0.02)
    parser.add_argument("--problem", choices=list(PROBLEMS), default="digits")
    parser.add_argument("--epochs", type=float, help="baseline epochs (digits 30, mnist 4)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    load = [os.getloadavg()]
    weights = baseline(args.problem, args.epochs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, embedded_api(Path(tmp)) as (_, api):
        model = api.register_model(weights, ARCH, PROBLEMS[args.problem].config)
        for seed in range(args.seeds):
            single = run_job(api, model["id"], seed, {"max_trials": args.trials}, args)
            multi = run_job(api, model["id"], seed, {
                "max_trials": 1000, "max_minutes": single["wall_s"] / 60,
                "rungs": {"min_fraction": args.min_fraction, "eta": 3},
            }, args)  # fmt: skip
            reached = reach(multi["feasible_full"], single["best_ratio"])
            third = single["wall_s"] / 3
            rows.append({"seed": seed, "single": single, "multi": multi, "reach_s": reached,
                         "reach_fraction": None if reached is None
                         else round(reached / single["wall_s"], 3),
                         "single_best_at_third": best_by(single["feasible_full"], third),
                         "multi_best_at_third": best_by(multi["feasible_full"], third)})  # fmt: skip
            load.append(os.getloadavg())
            print(json.dumps({k: rows[-1][k] for k in ("seed", "reach_s", "reach_fraction")}
                             | {"single_best": single["best_ratio"], "single_wall": single["wall_s"],
                                "multi_best": multi["best_ratio"]}), flush=True)  # fmt: skip
    fractions = [r["reach_fraction"] if r["reach_fraction"] is not None else float("inf")
                 for r in rows]  # fmt: skip
    summary = {
        "median_reach_fraction": statistics.median(fractions),
        "seeds_reached": sum(r["reach_fraction"] is not None for r in rows),
        "median_single_best": statistics.median(r["single"]["best_ratio"] or 0 for r in rows),
        "median_multi_best": statistics.median(r["multi"]["best_ratio"] or 0 for r in rows),
        "median_single_best_at_third": statistics.median(
            r["single_best_at_third"] or 0 for r in rows),
        "median_multi_best_at_third": statistics.median(
            r["multi_best_at_third"] or 0 for r in rows),
        "args": vars(args) | {"out": str(args.out)}, "load_average": load,
    }  # fmt: skip
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "load_average"}, indent=2))


if __name__ == "__main__":
    main()
