"""The service's own search on LeNet-300-100 (or ``lenet-5``, ``lenet-5-caffe``) and MNIST,
through the real HTTP API, within a wall-time budget; judged on the test split.

    .venv/bin/python -m bench.record --model lenet-300-100 --minutes 30
    .venv/bin/python -m bench.record --model lenet-5-caffe --minutes 45

1. Baseline: the model trained on ``builtin:mnist``'s training split (55,000 images; the seeded
   twelfth, 5,000, is the validation split the search selects on), Adam lr 2e-3, cosine,
   batch 128, ``--epochs`` (6), cached under ``bench/.cache/``.
2. An embedded server (SQLite, in-process worker, a temporary home); the model is registered
   over HTTP and one job submitted: **no ``search_space``** (the service's default space for
   the model), maximise ``compression_ratio`` subject to ``accuracy_drop <= --max-drop`` on
   the validation split, masked fine-tuning ``--finetune-epochs`` per stage (Adam, lr 1e-3,
   ``--schedule`` constant or cosine),
   ``budget.max_minutes`` = ``--minutes`` (``max_trials`` 1000), one trial at a time;
   ``--warm-start`` sets the job's ``warm_start`` (a proposal that extends a finished trial
   starts from its checkpoint, its pruning schedule ramping on from the parent's sparsity).
3. The job's best checkpoint is downloaded; its size is the file's bytes; its test accuracy
   is measured here on the 10,000 t10k images the search never saw, and compared with the
   baseline's. Printed as JSON and written to ``--out``, with each trial's finish time and
   ``best_found_s``, the seconds from the job's start to the best trial's finish.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.embedded import embedded_api
from operators import build_model, evaluate, load_checkpoint, load_dataset, train
from operators.metrics import held_out_metrics

CACHE = Path(__file__).resolve().parents[1] / ".cache"


def baseline(model_name: str, epochs: float, seed: int) -> Path:
    """Train ``model_name`` on MNIST once (cached); the safetensors path."""
    path = CACHE / f"record-{model_name}-e{epochs}-s{seed}.safetensors"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(model_name, {})
    train(model, load_dataset("builtin:mnist"), epochs=epochs, lr=2e-3, batch_size=128,
          seed=seed, schedule="cosine")  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _time(stamp: str | None) -> float | None:
    """Seconds since the epoch of an API timestamp (ISO 8601), None for None."""
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def job_spec(model_id: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "dataset": "builtin:mnist",
        "objective": {"maximize": "compression_ratio",
                      "constraints": [{"metric": "accuracy_drop", "max": args.max_drop}]},  # fmt: skip
        "finetune": {"method": "masked", "epochs": args.finetune_epochs, "lr": 1e-3,
                     "batch_size": 128, "schedule": args.schedule},  # fmt: skip
        "budget": {"max_trials": 1000, "max_parallel": 1, "max_minutes": args.minutes},
        "seed": args.seed,
        "warm_start": args.warm_start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet-300-100")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="the fine-tune's learning-rate schedule (per stage)")
    parser.add_argument("--warm-start", action="store_true",
                        help="the job's warm_start: a proposal that extends a finished trial "
                             "starts from its checkpoint")
    parser.add_argument("--epochs", type=float, default=6.0, help="baseline training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(__file__).with_name(f"results-{args.model}.json")
    load_before = os.getloadavg()
    weights = baseline(args.model, args.epochs, args.seed)
    mnist = load_dataset("builtin:mnist")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with embedded_api(folder) as (_, api):
            model = api.register_model(weights, args.model, {})
            started = time.perf_counter()
            job = api.submit(job_spec(model["id"], args))
            job = api.wait(job["id"])
            wall = time.perf_counter() - started
            trials = api.trials(job["id"])
            best = job.get("best")
            result: dict[str, Any] = {
                "model": args.model, "minutes": args.minutes, "max_drop": args.max_drop,
                "finetune_epochs": args.finetune_epochs, "schedule": args.schedule,
                "warm_start": args.warm_start, "wall_s": round(wall, 1),
                "state": job["state"], "stop_reason": job.get("stop_reason"),
                "trials": len(trials), "search_space": job["spec"].get("search_space"),
                "baseline": job.get("baseline"),
            }  # fmt: skip
            if best:
                path = api.download(best["id"], folder / "best.acpk")
                packed, _ = load_checkpoint(path, runtime="dense")
                test = held_out_metrics(packed, mnist)
                dense = build_model(args.model, {})
                dense.load_state_dict(load_file(str(weights)))
                base_test = held_out_metrics(dense, mnist)
                dense_bytes = job["baseline"]["size_bytes"]
                result["best"] = {
                    "trial": best["number"], "strategy": best.get("strategy"),
                    "params": best.get("params"), "size_bytes": path.stat().st_size,
                    "ratio_vs_dense_file": round(dense_bytes / path.stat().st_size, 1),
                    "validation": {k: best["metrics"].get(k) for k in ("accuracy", "accuracy_drop")},
                    "test_accuracy": test["test_accuracy"],
                    "baseline_test_accuracy": base_test["test_accuracy"],
                    "test_drop": round(base_test["test_accuracy"] - test["test_accuracy"], 4),
                    "validation_accuracy_recheck": evaluate(packed, mnist)["accuracy"],
                }  # fmt: skip
            started_at = _time(job.get("started_at"))
            result["best_found_s"] = (
                round(_time(best["finished_at"]) - started_at, 1) if best and started_at else None
            )
            result["trials_table"] = [
                {"n": t["number"], "state": t["state"], "strategy": t.get("strategy"),
                 "params": t.get("params"), "epochs": t.get("epochs"),
                 "finished_s": round(_time(t["finished_at"]) - started_at, 1)
                 if t.get("finished_at") and started_at else None,
                 "ratio": (t.get("metrics") or {}).get("compression_ratio"),
                 "drop": (t.get("metrics") or {}).get("accuracy_drop"),
                 "test_drop": (t.get("metrics") or {}).get("test_accuracy_drop")}
                for t in trials
            ]  # fmt: skip
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("trials_table", "search_space")}, indent=2))


if __name__ == "__main__":
    main()
