"""Shared fixtures: a real Postgres database (created, migrated, dropped), a real Redis
database, real server and worker processes, and a small trained model to compress."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

PG_ADMIN = os.environ.get("AUTOCOMPRESS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("AUTOCOMPRESS_TEST_REDIS", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh Postgres database (its SQLAlchemy URL), dropped afterwards."""
    name = f"ac_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for one test, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after."""
    client = redis.Redis.from_url(f"{REDIS_HOST}/0")
    client.ping()
    for db in range(15, 0, -1):  # pick an empty logical database
        url = f"{REDIS_HOST}/{db}"
        c = redis.Redis.from_url(url)
        if c.dbsize() == 0 and c.set("autocompress-test-lock", "1", nx=True, ex=900):
            break
    else:
        pytest.fail("no free Redis logical database for the test")
    c.flushdb()
    yield url
    c.flushdb()


class Proc:
    """A child process in its own session (so a SIGKILL reaches its children too)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


class Stack:
    """Environment and processes of one test's autocompress deployment."""

    def __init__(self, tmp: Path, database_url: str = "", broker_url: str = "") -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.env = {
            **os.environ,
            "AUTOCOMPRESS_HOME": str(tmp / "home"),
            "AUTOCOMPRESS_ARTIFACT_ROOT": str(tmp / "artifacts"),
            "AUTOCOMPRESS_DATA_ROOTS": f'["{tmp / "data"}"]',
            "AUTOCOMPRESS_DATABASE_URL": database_url,
            "AUTOCOMPRESS_BROKER_URL": broker_url,
            "AUTOCOMPRESS_LEASE_SECONDS": "4",
            "AUTOCOMPRESS_HEARTBEAT_SECONDS": "1",
            "AUTOCOMPRESS_SWEEP_SECONDS": "1",
            "AUTOCOMPRESS_REQUEUE_GRACE_SECONDS": "10",  # a lost message is re-sent within 10 s
            "OMP_NUM_THREADS": "1",
        }
        (tmp / "data").mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(
            [sys.executable, "-m", "service.cli", *args], self.env, self.tmp / f"{name}.log"
        )
        self.procs.append(proc)
        return proc

    def serve(self) -> Proc:
        proc = self.start("api", "serve", "--port", str(self.port))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                pytest.fail(f"the API server exited:\n{proc.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the API server did not answer:\n{proc.output()}")

    def worker(self, name: str = "worker") -> Proc:
        return self.start(name, "worker", "--concurrency", "1")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator:
    stacks: list[Stack] = []

    def make(database_url: str = "", broker_url: str = "") -> Stack:
        stack = Stack(tmp_path, database_url, broker_url)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """`make_stack` for a whole test module (one server for its tests); `make(**env)` adds
    AUTOCOMPRESS_* settings, e.g. make(AUTOCOMPRESS_REQUIRE_API_KEY="true")."""
    stacks: list[Stack] = []

    def make(database_url: str = "", broker_url: str = "", **env: str) -> Stack:
        stack = Stack(tmp_path_factory.mktemp("stack"), database_url, broker_url)
        stack.env.update(env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def train_small_model(path: Path, architecture: str, config: dict, dataset: str, epochs: float) -> Path:
    """A quickly trained model saved as safetensors, to register over HTTP."""
    import torch
    from safetensors.torch import save_file

    from operators.data.datasets import load_dataset
    from operators.models.zoo import build_model
    from operators.train.loop import train

    torch.manual_seed(0)
    model = build_model(architecture, config)
    if epochs:
        train(model, load_dataset(dataset), epochs=epochs, lr=3e-3, batch_size=64, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


DIGITS_CONFIG = {"in_features": 64, "hidden": [64], "num_classes": 10}


def serve_digits_model(stack: Stack, weights: Path) -> int:
    """Start the stack's API server and register the digits MLP through the client; its id."""
    from client import Client

    stack.serve()
    with Client(stack.url) as api:
        return api.register_model(weights, "mlp", DIGITS_CONFIG, name="digits")["id"]


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained on scikit-learn's digits (about 95% accuracy)."""
    path = tmp_path_factory.mktemp("models") / "digits-mlp.safetensors"
    return train_small_model(
        path, "mlp", {"in_features": 64, "hidden": [64], "num_classes": 10}, "builtin:digits", 15
    )


class RecordingDispatcher:
    """A `Dispatcher` that collects what would be enqueued, so the test decides what runs."""

    def __init__(self) -> None:
        self.advanced: list[int] = []
        self.evaluations: list[tuple[int, int]] = []

    def advance_job(self, job_id: int) -> None:
        self.advanced.append(job_id)

    def evaluate_trial(self, trial_id: int, attempt: int) -> None:
        self.evaluations.append((trial_id, attempt))


DIGITS_JOB_SPEC = {
    "dataset": "builtin:digits",
    "objective": {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.05}]},
    "search_space": {"strategies": [{"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.2, "max": 0.8}}]}]},
    "finetune": {"method": "masked", "epochs": 1, "lr": 1e-3, "batch_size": 64},
    "budget": {"max_trials": 3, "max_parallel": 2},
}


@pytest.fixture
def digits_job(tmp_path: Path, digits_model: Path):  # noqa: ANN201
    """(settings, job id): a migrated SQLite database with the digits model and a queued job
    of 3 trials, 2 at a time, for driving workers.jobs directly."""
    from service.core.db import Job, ModelRecord, session_scope, upgrade
    from service.core.settings import Settings
    from service.core.storage import ArtifactStore

    settings = Settings(home=tmp_path, lease_seconds=60, max_attempts=2)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    store = ArtifactStore(settings.artifact_root)
    with store.writing("weights") as (tmp, relative):
        tmp.write_bytes(digits_model.read_bytes())
    with session_scope(settings.database_url) as session:
        artifact = store.register(session, "weights", relative)
        model = ModelRecord(
            name="m", architecture="mlp", params=0, weights_artifact_id=artifact.id,
            config={"in_features": 64, "hidden": [64], "num_classes": 10},
        )  # fmt: skip
        session.add(model)
        session.flush()
        job = Job(model_id=model.id, spec=DIGITS_JOB_SPEC, seed=3)
        session.add(job)
        session.flush()
        job_id = job.id
    return settings, job_id


def trials_of(settings, job_id: int) -> list:  # noqa: ANN001
    """The job's trials, read in a fresh session."""
    from service.core import repository
    from service.core.db import session_scope

    with session_scope(settings.database_url) as session:
        return repository.job_trials(session, job_id)


def expire_lease(settings, trial_id: int) -> None:  # noqa: ANN001
    """Make the trial look like its worker died: running, with a lease already past."""
    from datetime import timedelta

    from sqlalchemy import update

    from service.core.db import Trial, db_now, session_scope

    with session_scope(settings.database_url) as session:
        past = db_now(session) - timedelta(seconds=5)
        session.execute(
            update(Trial).where(Trial.id == trial_id).values(state="running", lease_expires_at=past)
        )
