"""`autocompress demo`: the whole product on one machine, through the real HTTP API.

Trains LeNet-300-100 on the shipped MNIST files (cached), starts the API with in-process
workers on a local port, registers the model, submits a job (maximise compression_ratio with
accuracy_drop <= 0.01), shows progress, prints the Pareto front, downloads the best checkpoint,
reloads it without pickle, re-evaluates it, and ends with one line of JSON.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.api.schemas import EXAMPLE_JOB
from service.core.settings import Settings, get_settings

ARCHITECTURE = "lenet-300-100"
DATASET = "builtin:mnist"


def demo_job(model_id: int, trials: int, epochs: float, seed: int) -> dict[str, Any]:
    """The demo's job (the API docs' example): prune (global magnitude) + float16 on MNIST,
    maximise compression_ratio with accuracy_drop <= 0.01, strength chosen by the optimiser."""
    job = copy.deepcopy(EXAMPLE_JOB)
    job.update(model_id=model_id, seed=seed, budget={"max_trials": trials, "max_parallel": 1})
    job["finetune"]["epochs"] = epochs
    return job


def baseline_weights(settings: Settings, console: Console, seed: int = 0) -> Path:
    """Train LeNet-300-100 on MNIST once and cache its weights under the home folder."""
    import torch
    from safetensors.torch import save_file

    from operators import build_model, evaluate, load_dataset, train

    path = settings.home / "baselines" / f"{ARCHITECTURE}-mnist-seed{seed}.safetensors"
    if path.exists():
        console.print(f"baseline: cached {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_model(ARCHITECTURE, {})
    dataset = load_dataset(DATASET)
    started = time.perf_counter()
    with console.status("training the LeNet-300-100 baseline on MNIST (once, then cached)"):
        train(model, dataset, epochs=6, lr=2e-3, batch_size=128, seed=seed, schedule="cosine")
    accuracy = evaluate(model, dataset)["accuracy"]
    console.print(
        f"baseline: trained in {time.perf_counter() - started:.0f} s, accuracy {accuracy:.4f}"
    )
    tmp = path.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """uvicorn serving the real app in a background thread of this process."""

    def __init__(self, settings: Settings, port: int) -> None:
        import uvicorn

        from service.main import create_app

        self.port = port or _free_port()
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _describe_best(best: dict | None) -> str:
    if not best or not best.get("metrics"):
        return "best feasible: none yet"
    m = best["metrics"]
    test = f", test drop {m['test_accuracy_drop']:+.4f}" if "test_accuracy_drop" in m else ""
    return (
        f"best feasible: {m['compression_ratio']:.1f}x, accuracy {m['accuracy']:.4f} "
        f"(drop {m['accuracy_drop']:+.4f}{test}), {m['size_bytes'] / 1024:.1f} KiB"
    )


def _poll(client: httpx.Client, job_id: int, console: Console) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]job {task.fields[job]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=None, job=job_id)
        while True:
            job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            p = job["progress"]
            running = f", {p['running']} running" if p["running"] else ""
            progress.update(
                task,
                total=p["trials_total"],
                completed=p["trials_done"],
                description=f"{job['state']}{running}; {_describe_best(job['best'])}",
            )
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)


def _pareto_table(front: dict[str, Any]) -> Table:
    table = Table(title="Pareto front (feasible trials): accuracy vs size_bytes")
    for col in ("trial", "strategy", "params", "accuracy", "drop", "test drop", "size_bytes", "ratio"):
        table.add_column(col, justify="right" if col not in ("strategy", "params") else "left")
    for t in front["trials"]:
        m = t["metrics"]
        params = ", ".join(
            f"{k.split('.', 1)[-1]}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in t["params"].items()
        )
        table.add_row(
            str(t["number"]),
            t["strategy"],
            params,
            f"{m['accuracy']:.4f}",
            f"{m['accuracy_drop']:+.4f}",
            f"{m['test_accuracy_drop']:+.4f}" if "test_accuracy_drop" in m else "-",
            f"{m['size_bytes']:,}",
            f"{m['compression_ratio']:.1f}x",
        )
    return table


def run_demo(trials: int = 10, epochs: float = 1.0, seed: int = 0, port: int = 0) -> int:
    """Run the demo; returns the process exit code (0 when a feasible result was found)."""
    from operators import evaluate, load_checkpoint, load_dataset

    started = time.perf_counter()
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console(stderr=True, width=110)
    settings = get_settings()
    settings.ensure_dirs()
    weights = baseline_weights(settings, console, seed=seed)
    setup_done = time.perf_counter()
    with LocalServer(settings, port) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        console.print(f"API at {server.url} (docs: {server.url}/docs)")
        with open(weights, "rb") as fh:
            model = client.post(
                "/v1/models",
                data={"architecture": ARCHITECTURE, "config": "{}", "name": "demo LeNet-300-100"},
                files={"weights": (weights.name, fh, "application/octet-stream")},
            )
        model = model.raise_for_status().json()
        reply = client.post("/v1/jobs", json=demo_job(model["id"], trials, epochs, seed))
        job_id = reply.raise_for_status().json()["id"]
        job = _poll(client, job_id, console)
        front = client.get(f"/v1/jobs/{job_id}/pareto").raise_for_status().json()
        console.print(_pareto_table(front))
        best = job["best"]
        if job["state"] != "succeeded" or best is None:
            console.print(f"[red]no feasible result: state {job['state']}, {job.get('error')}")
            print(json.dumps({"job": job_id, "state": job["state"], "error": job.get("error")}))
            return 1
        download = settings.home / "downloads" / f"job{job_id}-trial{best['number']}.acpk"
        download.parent.mkdir(parents=True, exist_ok=True)
        with client.stream("GET", f"/v1/trials/{best['id']}/checkpoint") as r:
            r.raise_for_status()
            with open(download, "wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
    reloaded, _ = load_checkpoint(download)
    data = load_dataset(DATASET)
    accuracy = evaluate(reloaded, data)["accuracy"]
    test_accuracy = evaluate(reloaded, data, split="test")["accuracy"]
    baseline = job["baseline"]
    size = download.stat().st_size
    console.print(
        f"downloaded {download} ({size:,} bytes), reloaded without pickle: accuracy {accuracy:.4f}"
        f" (server measured {best['metrics']['accuracy']:.4f})"
    )
    result = {
        "job": job_id,
        "trials": job["progress"]["trials_done"],
        "best": {
            "compression_ratio": round(baseline["size_bytes"] / size, 2),
            "accuracy": round(accuracy, 4),
            "accuracy_drop": round(baseline["accuracy"] - accuracy, 4),
            "test_accuracy": round(test_accuracy, 4),
            "test_accuracy_drop": round(baseline["test_accuracy"] - test_accuracy, 4),
            "size_bytes": size,
            "strategy": {"name": best["strategy"], "steps": best["steps"]},
        },
        "baseline": {"accuracy": round(baseline["accuracy"], 4),
                     "test_accuracy": round(baseline["test_accuracy"], 4),
                     "size_bytes": baseline["size_bytes"]},  # fmt: skip
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_after_setup": round(time.perf_counter() - setup_done, 1),
    }
    print(json.dumps(result), flush=True)
    return 0
