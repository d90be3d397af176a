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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for one test, dropped afterwards."""
    name = f"ac_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def train_small_model(path: Path, architecture: str, config: dict, dataset: str, epochs: float) -> Path:
    """A quickly trained model saved as safetensors, to register over HTTP."""
    import torch
    from safetensors.torch import save_file

    from operators.datasets import load_dataset
    from operators.training import train
    from operators.zoo import build_model

    torch.manual_seed(0)
    model = build_model(architecture, config)
    if epochs:
        train(model, load_dataset(dataset), epochs=epochs, lr=3e-3, batch_size=64, seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained on scikit-learn's digits (about 95% accuracy)."""
    path = tmp_path_factory.mktemp("models") / "digits-mlp.safetensors"
    return train_small_model(
        path, "mlp", {"in_features": 64, "hidden": [64], "num_classes": 10}, "builtin:digits", 15
    )
