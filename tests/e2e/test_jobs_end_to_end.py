"""End to end over real HTTP: distributed (uvicorn + Celery worker process + Postgres + Redis),
embedded (SQLite, in-process workers), and a worker killed with SIGKILL in the middle of a trial."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from client import parse_events
from operators import evaluate, load_checkpoint, load_dataset

pytestmark = pytest.mark.e2e

DIGITS_CONFIG = {"in_features": 64, "hidden": [64], "num_classes": 10}


def digits_job(model_id: int, trials: int = 4, parallel: int = 2) -> dict:
    return {
        "model_id": model_id,
        "dataset": "builtin:digits",
        "objective": {
            "maximize": "compression_ratio",
            "constraints": [{"metric": "accuracy_drop", "max": 0.05}],
        },
        "search_space": {
            "strategies": [
                {
                    "name": "prune+fp16",
                    "steps": [
                        {"op": "prune", "sparsity": {"min": 0.3, "max": 0.9}},
                        {"op": "quantize", "dtype": "float16"},
                    ],
                }
            ]
        },
        "finetune": {"method": "masked", "epochs": 2, "lr": 1e-3, "batch_size": 64},
        "budget": {"max_trials": trials, "max_parallel": parallel},
        "seed": 7,
    }


def register(client: httpx.Client, weights: Path, architecture: str, config: dict) -> int:
    import json

    with open(weights, "rb") as fh:
        reply = client.post(
            "/v1/models",
            data={"architecture": architecture, "config": json.dumps(config)},
            files={"weights": (weights.name, fh, "application/octet-stream")},
        )
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def wait_for(client: httpx.Client, job_id: int, timeout: float, procs=()) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    logs = "\n".join(p.output() for p in procs)
    pytest.fail(f"job {job_id} did not finish in {timeout} s: {job}\n{logs}")


def check_finished_job(client: httpx.Client, job: dict, tmp: Path, trials: int) -> list[dict]:
    """Every trial accounted for, metrics complete, best checkpoint downloads and reloads."""
    assert job["state"] == "succeeded", job
    assert job["progress"]["trials_done"] == trials
    assert "trial budget" in job["stop_reason"]
    listed = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert [t["number"] for t in listed] == list(range(trials))
    assert all(t["state"] == "succeeded" for t in listed), listed
    for t in listed:
        m = t["metrics"]
        assert m["device"] == "cpu" and t["device"] == "cpu"
        for name in ("accuracy", "accuracy_drop", "size_bytes", "compression_ratio", "latency_ms"):
            assert isinstance(m[name], (int, float)), name
        assert m["compression_ratio"] > 1.5  # pruned >= 30% and stored as float16
        assert t["reason"]["method"]
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as reply:  # written by any process
        kinds = [event.kind for event in parse_events(reply.iter_lines())]
    assert kinds[-1] == "job.finished" and kinds.count("trial.finished") == trials, kinds
    pareto = client.get(f"/v1/jobs/{job['id']}/pareto").json()
    assert pareto["trials"], "a finished job with feasible trials has a Pareto front"
    best = job["best"]
    assert best is not None and best["feasible"]
    path = tmp / "best.safetensors"
    with client.stream("GET", f"/v1/trials/{best['id']}/checkpoint") as reply:
        assert reply.status_code == 200
        path.write_bytes(reply.read())
    assert path.stat().st_size == best["metrics"]["size_bytes"]
    model, manifest = load_checkpoint(path)
    assert manifest["architecture"] == "mlp"
    accuracy = evaluate(model, load_dataset("builtin:digits"))["accuracy"]
    assert accuracy == pytest.approx(best["metrics"]["accuracy"], abs=1e-6)
    assert client.get(f"/v1/jobs/{job['id']}/pareto.svg").headers["content-type"].startswith(
        "image/svg+xml"
    )
    return listed


def test_distributed_job_over_http_celery_postgres_redis(
    make_stack, pg_url, redis_url, digits_model, tmp_path
) -> None:
    stack = make_stack(database_url=pg_url, broker_url=redis_url)
    migrated = stack.cli("db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    api = stack.serve()
    worker = stack.worker()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        assert client.get("/healthz").json()["mode"] == "distributed"
        model_id = register(client, digits_model, "mlp", DIGITS_CONFIG)
        reply = client.post("/v1/jobs", json=digits_job(model_id))
        assert reply.status_code == 202, reply.text
        assert reply.headers["location"] == f"/v1/jobs/{reply.json()['id']}"
        job = wait_for(client, reply.json()["id"], timeout=240, procs=(api, worker))
        trials = check_finished_job(client, job, tmp_path, trials=4)
    assert {t["attempt"] for t in trials} == {1}


def test_embedded_job_over_http(make_stack, digits_model, tmp_path) -> None:
    stack = make_stack()  # no database URL, no broker: SQLite and in-process workers
    stack.serve()
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        assert client.get("/healthz").json()["mode"] == "embedded"
        model_id = register(client, digits_model, "mlp", DIGITS_CONFIG)
        reply = client.post("/v1/jobs", json=digits_job(model_id))
        assert reply.status_code == 202, reply.text
        job = wait_for(client, reply.json()["id"], timeout=240, procs=stack.procs)
        check_finished_job(client, job, tmp_path, trials=4)
    assert (tmp_path / "home" / "autocompress.db").exists()


def test_worker_killed_mid_trial_loses_no_work(make_stack, pg_url, redis_url, tmp_path) -> None:
    from tests.conftest import train_small_model

    weights = train_small_model(
        tmp_path / "lenet.safetensors", "lenet-300-100", {}, "builtin:mnist", 0
    )
    stack = make_stack(database_url=pg_url, broker_url=redis_url)
    assert stack.cli("db", "upgrade").returncode == 0
    api = stack.serve()
    first = stack.worker("worker-1")
    spec = {
        "model_id": 0,
        "dataset": "builtin:mnist",
        "objective": {"maximize": "compression_ratio", "constraints": []},
        "search_space": {
            "strategies": [{"name": "prune", "steps": [{"op": "prune", "sparsity": {"min": 0.5, "max": 0.9}}]}]
        },
        "finetune": {"method": "masked", "epochs": 1, "batch_size": 64},
        "budget": {"max_trials": 3, "max_parallel": 1},
        "seed": 1,
    }
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        spec["model_id"] = register(client, weights, "lenet-300-100", {})
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        deadline = time.monotonic() + 180
        victim = None
        while time.monotonic() < deadline and victim is None:
            for t in client.get(f"/v1/jobs/{job_id}/trials").json():
                if t["state"] == "running" and t["progress"] > 0:
                    victim = t
            time.sleep(0.2)
        assert victim is not None, first.output()
        first.kill()  # SIGKILL to the worker and its pool children, mid-trial
        assert client.get(f"/v1/trials/{victim['id']}").json()["state"] == "running"
        second = stack.worker("worker-2")
        job = wait_for(client, job_id, timeout=300, procs=(api, second))
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()
    assert job["state"] == "succeeded", job
    assert [t["state"] for t in trials] == ["succeeded"] * 3
    retried = next(t for t in trials if t["id"] == victim["id"])
    assert retried["attempt"] == 2 and retried["error"] is None  # the last attempt succeeded
    [lost] = retried["attempts"]  # the killed attempt, on the pool process that ran it
    assert "lease expired" in lost["outcome"] and lost["worker"] == victim["worker"]
    assert lost["worker"].rsplit(":", 1)[1].isdigit()


def test_cancel_stops_a_running_job(make_stack, tmp_path) -> None:
    from tests.conftest import train_small_model

    weights = train_small_model(tmp_path / "lenet.safetensors", "lenet-300-100", {}, "builtin:mnist", 0)
    stack = make_stack()
    stack.serve()
    spec = {
        "model_id": 0,
        "dataset": "builtin:mnist",
        "objective": {"maximize": "compression_ratio"},
        "search_space": {"strategies": [{"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.5, "max": 0.9}}]}]},
        "finetune": {"method": "masked", "epochs": 20},
        "budget": {"max_trials": 5, "max_parallel": 1},
    }
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        spec["model_id"] = register(client, weights, "lenet-300-100", {})
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            trials = client.get(f"/v1/jobs/{job_id}/trials").json()
            if trials and trials[0]["state"] == "running":
                break
            time.sleep(0.2)
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        job = wait_for(client, job_id, timeout=60, procs=stack.procs)
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()
    assert job["state"] == "cancelled" and job["stop_reason"] == "cancelled by the user"
    assert len(trials) == 1 and trials[0]["state"] == "cancelled"
