"""Issue 9's model benchmark: timm ResNet-18, timm MobileNetV3-Small and a Hugging Face ViT,
trained here on the shipped MNIST files, compressed by the service through its HTTP API,
timed dense and compressed in PyTorch and in onnxruntime.

    .venv/bin/python -m bench.models                       # full mode (~25-30 min, 2 cores)
    .venv/bin/python -m bench.models --quick               # tiny configs, smoke test (< 3 min)
    .venv/bin/python -m bench.models --models resnet18,vit --trials 4 --train-images 8000 \
        --epochs 1 --finetune-epochs 0.25 --threads 2 --out bench/models/results.json

Per model (random init; nothing is downloaded):

1. **Baseline**: trained on the first ``--train-images`` (seeded order) of ``builtin:mnist``'s
   training split at 28x28, 1 channel (Adam, lr 1e-3, cosine, batch 64, ``--epochs``; the
   ViT 3 times as many), cached in
   ``bench/.cache/``; its accuracy on the whole test split (10,000 images).
2. **Server**: an embedded autocompress (SQLite, in-process worker) on a local port; the
   model is registered over HTTP (``POST /v1/models``: ``architecture``, ``config``,
   ``input_shape`` [1, 28, 28], safetensors weights). ``--dataset subset`` (default) uploads
   an ``.npz`` (``POST /v1/datasets``) holding the same training images and the first
   ``--val-images`` of MNIST's validation split (the seeded twelfth of the training files),
   so fine-tuning and selection cost what the 2 cores allow; ``--dataset builtin`` gives the
   jobs ``builtin:mnist`` itself (55,000 train, 5,000 validation; each trial then also reports
   ``test_accuracy_drop``).
3. **Two jobs** (``--jobs``: both, or only ``size`` or ``speed``), each ``--trials`` trials,
   one at a time, masked fine-tuning of
   ``--finetune-epochs`` epochs of the job's training set; the service's optimiser picks every
   strength (ranges only):
   - *size*: minimise ``size_bytes`` subject to ``accuracy_drop <= 0.01``; space ``prune``
     (sparsity 0.5-0.97) + ``cluster`` (2-5 bits) + ``quantize`` float16, or the service's
     default space (``--size-space default``);
   - *speed*: minimise ``latency_ms`` at ``latency_batch_size`` 64 subject to
     ``accuracy_drop <= 0.01``; channel removal only: ``filter_prune`` (ratio 0.1-0.75) for
     the CNNs; ``head_prune`` (ratio 0.1-0.5, when the op is registered) and ``neuron_prune``
     (FFN neurons, ratio 0.2-0.8) for the ViT; each with and without ``quantize`` float16.
4. The best feasible trial's checkpoint is downloaded (``GET /v1/trials/{id}/checkpoint``) and
   its ONNX export fetched (``GET /v1/trials/{id}/export?format=onnx``); the drop is judged on
   the whole test split by evaluating the downloaded checkpoint here. A job with no feasible
   trial is reported with its closest trial, marked infeasible.
5. **Latency** at batch 1 and 64 (test images), in this process, alternating (medians, see
   :mod:`bench.models.timing`), ``--threads`` threads on every side: dense PyTorch (the
   baseline), packed PyTorch (``load_checkpoint(..., runtime="auto")``), dense ONNX (the
   baseline's dense checkpoint through ``operators.export.export_checkpoint``, the path the
   export route takes) and compressed ONNX, both in
   onnxruntime. The 1-minute load average is recorded before and after the timing. Speed-up
   = dense median / compressed median (at batch 64 that is the throughput ratio).

The table is printed (markdown) and the figures written to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bench.embedded import embedded_api
from bench.models.timing import alternate, onnx_runner, onnx_session, torch_runner
from client import ApiError, Client
from operators.core.registry import OPS
from operators.data.datasets import Dataset, load_dataset
from operators.export import export_checkpoint
from operators.format.checkpoint import load_checkpoint, save_dense_checkpoint
from operators.metrics import evaluate
from operators.models.sources import build
from operators.ops.channels.graph import channel_round_to
from operators.train.loop import train

log = logging.getLogger("bench.models")
CACHE = Path(__file__).resolve().parents[1] / ".cache"
OUT = Path(__file__).resolve().parent / "results.json"
QUICK_OUT = CACHE / "models-results-quick.json"  # a smoke run's figures are not results
INPUT_SHAPE = [1, 28, 28]
BATCHES = (1, 64)
FORMS = ("torch_dense", "torch_packed", "onnx_dense", "onnx_compressed")
MAX_DROP = 0.01
BASELINE_BATCH = 64
TIMM = {"num_classes": 10, "in_chans": 1}
VIT = {"model_type": "vit", "image_size": 28, "num_channels": 1, "num_labels": 10}


@dataclass(frozen=True)
class Bench:
    """One benchmarked model: its source, config (full and ``--quick``) and channel ops."""

    architecture: str
    config: dict[str, Any]
    quick_config: dict[str, Any]
    quick_architecture: str = ""
    transformer: bool = False
    epoch_scale: float = 1.0  # baseline epochs = --epochs times this (a ViT needs more steps)


MODELS = {
    "resnet18": Bench("timm:resnet18", TIMM, {**TIMM, "channels": [8, 8, 16, 16], "stem_width": 8}),
    "mobilenetv3": Bench(
        "timm:mobilenetv3_small_100", TIMM, TIMM, quick_architecture="timm:mobilenetv3_small_050"
    ),  # fmt: skip
    "vit": Bench(
        "hf:image-classification",
        {
            **VIT,
            "patch_size": 4,
            "num_hidden_layers": 4,
            "hidden_size": 192,
            "num_attention_heads": 6,
            "intermediate_size": 768,
        },
        {
            **VIT,
            "patch_size": 7,
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        transformer=True,
        epoch_scale=3.0,
    ),  # fmt: skip
}
SIZE_SPACE = {"strategies": [{"name": "prune+cluster+fp16", "steps": [
    {"op": "prune", "sparsity": {"min": 0.5, "max": 0.97}},
    {"op": "cluster", "bits": {"choices": [2, 3, 4, 5]}},
    {"op": "quantize", "dtype": "float16"},
]}]}  # fmt: skip
FP16 = {"op": "quantize", "dtype": "float16"}


def channel_steps(bench: Bench) -> tuple[str, list[dict]]:
    """The speed job's channel-removal steps: ``filter_prune`` for a CNN; for a transformer
    ``head_prune`` (if registered) then ``neuron_prune``. Returns (name, steps)."""
    if not bench.transformer:
        with torch.device("meta"):
            round_to = channel_round_to(build(bench.architecture, bench.config))
        extra = {"round_to": round_to} if round_to > 1 else {}
        return "filters", [{"op": "filter_prune", "ratio": {"min": 0.1, "max": 0.75}, **extra}]
    neurons = {"op": "neuron_prune", "ratio": {"min": 0.2, "max": 0.8}}
    if "head_prune" not in OPS:
        return "neurons", [neurons]
    return "heads+neurons", [{"op": "head_prune", "ratio": {"min": 0.1, "max": 0.5}}, neurons]


def speed_space(bench: Bench) -> dict:
    """Channel removal only, with and without float16 storage."""
    name, steps = channel_steps(bench)
    return {"strategies": [{"name": name, "steps": steps},
                           {"name": f"{name}+fp16", "steps": [*steps, FP16]}]}  # fmt: skip


def training_subset(mnist: Dataset, n_train: int, n_val: int, seed: int) -> Dataset:
    """The first ``n_train`` training images in a seeded order and the first ``n_val``
    validation images of ``mnist`` (its test split kept whole)."""
    if not (0 < n_train <= len(mnist.y_train) and 0 < n_val <= len(mnist.y_val)):
        raise ValueError(f"--train-images must be 1..{len(mnist.y_train)} and --val-images "
                         f"1..{len(mnist.y_val)}; got {n_train} and {n_val}")  # fmt: skip
    order = torch.randperm(len(mnist.y_train), generator=torch.Generator().manual_seed(seed))
    pick = order[:n_train]
    return Dataset(
        mnist.x_train[pick], mnist.y_train[pick], mnist.x_val[:n_val], mnist.y_val[:n_val],
        mnist.num_classes, x_test=mnist.x_test, y_test=mnist.y_test,
    )  # fmt: skip


def baseline(architecture: str, config: dict, data: Dataset, epochs: float, seed: int) -> Path:
    """Train the model once (cached by architecture, config, images, epochs and seed) and
    return its safetensors weights."""
    key = json.dumps([architecture, config, len(data.y_train), epochs, seed], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = CACHE / f"models-{architecture.replace(':', '_')}-{digest}.safetensors"
    if path.exists():
        return path
    torch.manual_seed(seed)
    model = build(architecture, config)
    started = time.perf_counter()
    train(model, data, epochs=epochs, lr=1e-3, batch_size=BASELINE_BATCH, schedule="cosine",
          seed=seed)  # fmt: skip
    print(f"  baseline trained in {time.perf_counter() - started:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def register(url: str, weights: Path, architecture: str, config: dict) -> dict:
    """``POST /v1/models`` with the weights, the config and the input shape."""
    with open(weights, "rb") as fh:
        reply = httpx.post(
            f"{url}/v1/models", timeout=120,
            data={"architecture": architecture, "config": json.dumps(config),
                  "input_shape": json.dumps(INPUT_SHAPE), "name": architecture},
            files={"weights": (weights.name, fh, "application/octet-stream")},
        )  # fmt: skip
    if reply.status_code != 201:
        raise RuntimeError(f"registering {architecture}: {reply.status_code} {reply.text}")
    return reply.json()


def upload_subset(api: Client, data: Dataset, folder: Path) -> str:
    """Upload the training subset and validation images as an ``.npz``; the dataset ref."""
    path = folder / "mnist-subset.npz"
    np.savez(path, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(),
             x_val=data.x_val.numpy(), y_val=data.y_val.numpy())  # fmt: skip
    return api.upload_dataset(path)["ref"]


def job_spec(model_id: int, dataset: str, args: argparse.Namespace, *, objective: str,
             space: dict | None, latency_batch: int | None = None) -> dict:  # fmt: skip
    """A constrained job (accuracy_drop <= 0.01), one trial at a time."""
    spec: dict[str, Any] = {
        "model_id": model_id,
        "dataset": dataset,
        "objective": {
            "minimize": objective,
            "constraints": [{"metric": "accuracy_drop", "max": MAX_DROP}],
        },  # fmt: skip
        "finetune": {
            "method": "masked",
            "epochs": args.finetune_epochs,
            "batch_size": 128,
            "lr": 1e-3,
            "schedule": "cosine",
        },  # fmt: skip
        "budget": {"max_trials": args.trials, "max_parallel": 1},
        "seed": args.seed,
    }
    if space is not None:
        spec["search_space"] = space
    if latency_batch is not None:
        spec["latency_batch_size"] = latency_batch
    return spec


def run_job(api: Client, spec: dict, folder: Path, tag: str) -> dict[str, Any]:
    """Submit, wait, download the chosen trial's checkpoint and ONNX export."""
    started = time.perf_counter()
    job = api.wait(api.submit(spec)["id"])
    trials = api.trials(job["id"])
    chosen = job["best"] or job["closest"]
    result: dict[str, Any] = {
        "job": job["id"], "state": job["state"], "stop_reason": job.get("stop_reason"),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "trials": [{"number": t["number"], "state": t["state"], "strategy": t["strategy"],
                    "params": t["params"], "feasible": t["feasible"], "error": t["error"],
                    "metrics": t["metrics"]} for t in trials],
        "baseline": job["baseline"], "feasible": job["best"] is not None,
    }  # fmt: skip
    print(f"  {tag} job {job['id']}: {job['state']} in {result['minutes']} min, "
          f"{sum(t['feasible'] is True for t in trials)}/{len(trials)} feasible", flush=True)  # fmt: skip
    if chosen is None:
        return result
    result["trial"] = {"id": chosen["id"], "strategy": chosen["strategy"],
                       "params": chosen["params"], "steps": chosen["steps"],
                       "metrics": chosen["metrics"]}  # fmt: skip
    result["checkpoint"] = str(api.download(chosen["id"], folder / f"{tag}.safetensors"))
    try:
        result["onnx"] = str(api.export(chosen["id"], "onnx", folder / f"{tag}.onnx"))
    except ApiError as exc:  # timed without its ONNX form; the reason is kept
        result["onnx_error"] = str(exc)
    return result


def describe(trial: dict[str, Any]) -> str:
    """``strategy (param=value, ...)`` with the values the optimiser chose."""
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items()
    )
    return f"{trial['strategy']} ({params})" if params else trial["strategy"]


def time_forms(dense: torch.nn.Module, dense_onnx: Path, job: dict[str, Any], data: Dataset,
               args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Latency (ms, medians) of the four forms at each batch size, the load average around."""
    packed, _ = load_checkpoint(Path(job["checkpoint"]), runtime="auto")
    sessions = {"onnx_dense": onnx_session(dense_onnx, args.threads)}
    if "onnx" in job:
        sessions["onnx_compressed"] = onnx_session(Path(job["onnx"]), args.threads)
    x_test, _ = data.split("test")
    out: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    for batch in BATCHES:
        x = x_test[:batch].contiguous()
        medians = alternate(
            {"torch_dense": torch_runner(dense, x), "torch_packed": torch_runner(packed, x),
             **{k: onnx_runner(s, x) for k, s in sessions.items()}},
            repeats=args.repeats, budget_s=args.budget_s,
        )  # fmt: skip
        out[f"batch{batch}"] = {k: round(v * 1e3, 4) for k, v in medians.items()}
    out["load_after"] = os.getloadavg()[0]
    if "onnx_compressed" in sessions:
        with torch.inference_mode():
            x = x_test[:64]
            ref = packed(x).numpy()
            got = sessions["onnx_compressed"].run(None, {"input": x.numpy()})[0]
        out["onnx_max_abs_diff"] = float(np.abs(ref - got).max())
    out["packed_test_accuracy"] = evaluate(packed, data, split="test")["accuracy"]
    return out


def bench_model(name: str, api: Client, url: str, mnist: Dataset, data: Dataset, dataset: str,
                folder: Path, args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Baseline, registration, both jobs, downloads and timings of one model."""
    spec = MODELS[name]
    architecture = (
        (spec.quick_architecture or spec.architecture) if args.quick else spec.architecture
    )
    config = spec.quick_config if args.quick else spec.config
    print(f"{name}: {architecture} {json.dumps(config)}", flush=True)
    weights = baseline(architecture, config, data, args.epochs * spec.epoch_scale, args.seed)
    dense = build(architecture, config)
    dense.load_state_dict(load_file(str(weights)))
    dense.eval()
    base_test = evaluate(dense, mnist, split="test")["accuracy"]
    dense_onnx = folder / f"{name}-dense.onnx"  # the same export path as the compressed one
    dense_checkpoint = folder / f"{name}-dense.safetensors"
    save_dense_checkpoint(dense, dense_checkpoint, architecture=architecture, config=config)
    export_checkpoint(dense_checkpoint, "onnx", dense_onnx, input_shape=INPUT_SHAPE)
    model = register(url, weights, architecture, config)
    size_space = None if args.size_space == "default" else SIZE_SPACE
    jobs = {
        "size": job_spec(model["id"], dataset, args, objective="size_bytes", space=size_space),
        "speed": job_spec(
            model["id"],
            dataset,
            args,
            objective="latency_ms",
            space=speed_space(spec),
            latency_batch=64,
        ),  # fmt: skip
    }
    result: dict[str, Any] = {
        "model": name, "architecture": architecture, "config": config,
        "params": sum(p.numel() for p in dense.parameters()),
        "baseline_test_accuracy": base_test, "dense_onnx_bytes": dense_onnx.stat().st_size,
        "head_prune_registered": "head_prune" in OPS, "jobs": {},
    }  # fmt: skip
    for tag, job in jobs.items():
        if tag not in args.jobs:
            continue
        outcome = run_job(api, job, folder, f"{name}-{tag}")
        outcome["spec"] = job
        if "checkpoint" in outcome:
            outcome["timing"] = time_forms(dense, dense_onnx, outcome, mnist, args)
            outcome["test_drop"] = base_test - outcome["timing"]["packed_test_accuracy"]
            if "onnx" in outcome:
                outcome["compressed_onnx_bytes"] = Path(outcome["onnx"]).stat().st_size
        result["jobs"][tag] = outcome
    return result


def _cells(timing: dict[str, Any], batch: int) -> str:
    t = timing[f"batch{batch}"]
    return " / ".join(f"{t[k]:.3g}" if k in t else "-" for k in FORMS)


def _ratio(t: dict[str, float], dense: str, compressed: str) -> str:
    return f"{t[dense] / t[compressed]:.2f}x" if compressed in t else "-"


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of every model and job."""
    lines = [
        "| model | job | baseline test acc | strategy found | test drop (points) | size bytes "
        "dense / compressed | ratio | ms b1: pt dense / pt packed / onnx dense / onnx comp "
        "| ms b64: same | speed-up b64 pt / onnx | load 1-min before / after | feasible trials |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | | | failed: {r['error'][:160].replace('|', '/')} |"
                         + " |" * 8)  # fmt: skip
            continue
        for tag, job in r["jobs"].items():
            if "trial" not in job:
                errors = [t["error"] for t in job["trials"] if t["error"]]
                why = errors[0].strip().splitlines()[-1][:120] if errors else job["state"]
                lines.append(f"| {r['model']} | {tag} | {r['baseline_test_accuracy']:.4f} | "
                             f"no trial succeeded: {why.replace('|', '/')} | | | | | | | | |")  # fmt: skip
                continue
            metrics, timing = job["trial"]["metrics"], job["timing"]
            dense_bytes, size = job["baseline"]["size_bytes"], metrics["size_bytes"]
            b64 = timing["batch64"]
            found = describe(job["trial"]) + ("" if job["feasible"] else " **infeasible**")
            lines.append(
                f"| {r['model']} | {tag} | {r['baseline_test_accuracy']:.4f} | {found} | "
                f"{job['test_drop'] * 100:.2f} | {dense_bytes} / {size} | "
                f"{dense_bytes / size:.1f}x | {_cells(timing, 1)} | {_cells(timing, 64)} | "
                f"{_ratio(b64, 'torch_dense', 'torch_packed')} / "
                f"{_ratio(b64, 'onnx_dense', 'onnx_compressed')} | "
                f"{timing['load_before']:.2f} / {timing['load_after']:.2f} | "
                f"{sum(t['feasible'] is True for t in job['trials'])}/{len(job['trials'])} |"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` changes the defaults of the sizing options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, a few hundred images")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ",".join(MODELS)
    )
    parser.add_argument("--trials", type=int, help="trials per job (default 3; quick 2)")
    parser.add_argument(
        "--train-images", type=int, help="baseline and fine-tuning images (8000; quick 1000)"
    )
    parser.add_argument(
        "--val-images", type=int, help="validation images of the jobs (2000; quick 200)"
    )
    parser.add_argument("--epochs", type=float, help="baseline epochs (1; quick 2; ViT 3x)")
    parser.add_argument(
        "--finetune-epochs", type=float, help="fine-tuning epochs per trial (0.25; quick 0.5)"
    )
    parser.add_argument("--dataset", choices=("subset", "builtin"), default="subset")
    parser.add_argument("--jobs", default="size,speed", help="comma-separated: size,speed")
    parser.add_argument(
        "--size-space", choices=("prune-cluster", "default"), default="prune-cluster"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, help="least timing rounds per cell (7; quick 3)")
    parser.add_argument(
        "--budget-s", type=float, help="seconds of timing rounds per cell (4; quick 0.5)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"JSON results (default {OUT}; quick {QUICK_OUT})")
    args = parser.parse_args(argv)
    defaults = {"trials": (3, 2), "train_images": (8000, 1000), "val_images": (2000, 200),
                "epochs": (1.0, 2.0), "finetune_epochs": (0.25, 0.5), "repeats": (7, 3),
                "budget_s": (4.0, 0.5), "out": (OUT, QUICK_OUT)}  # fmt: skip
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if not args.jobs or set(args.jobs) - {"size", "speed"}:
        parser.error(f"--jobs: {args.jobs}; choose from size, speed")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.trials < 1 or args.threads < 1 or args.epochs <= 0 or args.finetune_epochs <= 0:
        parser.error("--trials, --threads, --epochs and --finetune-epochs must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the table and the JSON results."""
    args = parse(argv)
    started = time.perf_counter()
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load_start}; "
          f"head_prune registered: {'head_prune' in OPS}", flush=True)  # fmt: skip
    mnist = load_dataset("builtin:mnist")
    data = training_subset(mnist, args.train_images, args.val_images, args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with embedded_api(folder) as (server, api):
            dataset = (
                upload_subset(api, data, folder) if args.dataset == "subset" else "builtin:mnist"
            )
            for name in args.models:
                try:
                    results.append(
                        bench_model(name, api, server.url, mnist, data, dataset, folder, args)
                    )
                except Exception as exc:  # one model's failure must not lose the others' rows
                    log.exception("%s failed", name)
                    results.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
    for r in results:  # the files were in the temporary folder
        for job in r.get("jobs", {}).values():
            job.pop("checkpoint", None), job.pop("onnx", None)
    text = table(results)
    print(text)
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__, "load_start": load_start, "load_end": os.getloadavg(),
        "minutes": round((time.perf_counter() - started) / 60, 2), "results": results,
        "table": text,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"written {args.out} ({summary['minutes']} min)")
