"""Faults, with real processes: the test's own Postgres cluster (initdb + pg_ctl) and its own
redis-server, one API (uvicorn) and one Celery worker. Redis restarted with trial messages in
its queue, Redis stopped while a trial finishes, Postgres stopped as a trial writes its result,
the API killed with SIGKILL, a submission while Redis is down (idempotent: the retry gets
the same job), and a small job behind a large one (fair scheduling). Each ends with every job
`succeeded`, every trial accounted for at attempt 1 (no finished result lost), no orphaned
file, and a bound on how long the worker sat idle while work waited (the stall), measured and
printed as `STALL <fault>: <seconds>`.

One stack serves the module (the faults are what it must survive); the machine's own
Postgres and Redis are never touched.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import Stack, free_port
from tests.e2e.test_jobs_end_to_end import DIGITS_CONFIG, register

# Fault injection races real processes (broker reconnects, lease sweeps) on a 2-core machine
# shared with the rest of the suite: a run that misses its window is retried twice, and a
# fault that truly loses work fails all three. Seen flaky here: about one test in six per
# suite run under load; every failure passed on its own rerun.
pytestmark = [pytest.mark.e2e, pytest.mark.flaky(reruns=2, reruns_delay=2)]

PG_BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
GRACE = 3.0  # AUTOCOMPRESS_REQUEUE_GRACE_SECONDS of the stack
STALL_BOUND = 20.0  # grace + sweep + a proposal + a loaded machine's slack


def _as_postgres(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=60
    )


class PrivatePostgres:
    """A Postgres cluster of the test's own (initdb in a temp dir, a free port)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ac-faults-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data, self.port = self.dir / "data", free_port()
        done = _as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.options = (  # passed at every start: never the machine's port or socket
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE autocompress")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/autocompress"

    @property
    def url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+psycopg://")

    def _ctl(self, *args: str) -> None:
        done = _as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", *args
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        self._ctl("-o", self.options, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the test's own, without persistence: a restart loses its queue."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ac-faults-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("the private redis-server did not start")

    def queued(self) -> int:
        import redis

        return redis.Redis.from_url(self.url).llen("autocompress")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Monitor(threading.Thread):
    """Samples the trials of the watched jobs from the database every 0.2 s (an unreadable
    database counts as idle): the stall is the longest time with a job unfinished and no
    trial running."""

    def __init__(self, pg: PrivatePostgres, job_ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pg, self.job_ids = pg, job_ids
        self.samples: list[tuple[float, bool]] = []  # (time, a trial was running or all done)
        self._halt = threading.Event()

    def run(self) -> None:
        conn = None
        while not self._halt.wait(0.2):
            busy = False
            try:
                conn = conn or psycopg.connect(self.pg.dsn, autocommit=True)
                running = conn.execute("SELECT count(*) FROM trials WHERE state = 'running'").fetchone()[0]
                unfinished = conn.execute(
                    "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state IN ('queued', 'running')",
                    (self.job_ids,),
                ).fetchone()[0]
                busy = running > 0 or unfinished == 0
            except psycopg.Error:
                conn = None
            self.samples.append((time.monotonic(), busy))

    def stall_after(self, t0: float) -> float:
        """The longest idle stretch after `t0`, in seconds."""
        longest, since = 0.0, None
        for t, busy in self.samples:
            if t < t0:
                continue
            if not busy and since is None:
                since = t
            elif busy and since is not None:
                longest, since = max(longest, t - since), None
        return longest

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class Faults:
    """The module's stack: private Postgres and Redis, an API and a worker, a registered model."""

    def __init__(self, tmp: Path, model: Path) -> None:
        t0 = time.monotonic()
        self.pg, self.redis = PrivatePostgres(), PrivateRedis()
        print(f"private postgres and redis: {time.monotonic() - t0:.1f} s")
        self.stack = Stack(tmp, self.pg.url, self.redis.url)
        self.stack.env.update(
            AUTOCOMPRESS_LEASE_SECONDS="60",  # no worker dies here: outages stay inside it
            AUTOCOMPRESS_REQUEUE_GRACE_SECONDS=str(GRACE),
            AUTOCOMPRESS_MAX_INFLIGHT_PER_JOB="1",
            AUTOCOMPRESS_ORPHAN_GRACE_SECONDS="5",
            AUTOCOMPRESS_DB_RETRY_SECONDS="30",
            AUTOCOMPRESS_VISIBILITY_TIMEOUT_SECONDS="30",
        )
        migrated = self.stack.cli("db", "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        self.api = self.stack.serve()
        self.worker = self.stack.worker()
        self.client = httpx.Client(base_url=self.stack.url, timeout=30)
        self.model_id = register(self.client, model, "mlp", DIGITS_CONFIG)
        print(f"fault stack up: {time.monotonic() - t0:.1f} s")

    def spec(self, trials: int = 2, parallel: int = 1, seed: int = 0, epochs: int = 2) -> dict:
        return {
            "model_id": self.model_id,
            "dataset": "builtin:digits",
            "objective": {"maximize": "compression_ratio"},
            "search_space": {"strategies": [
                {"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.3, "max": 0.8}}]}
            ]},
            "finetune": {"method": "masked", "epochs": epochs, "batch_size": 64},
            "budget": {"max_trials": trials, "max_parallel": parallel},
            "seed": seed,
        }  # fmt: skip

    def submit(self, **kwargs: int) -> int:
        reply = self.client.post("/v1/jobs", json=self.spec(**kwargs))
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]

    def trials(self, job_id: int) -> list[dict]:
        return self.client.get(f"/v1/jobs/{job_id}/trials").json()

    def wait_until(self, predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except (httpx.HTTPError, ValueError, KeyError):
                value = None
            if value:
                return value
            time.sleep(0.1)
        pytest.fail(f"{what} not within {timeout} s\n{self.api.output()}\n{self.worker.output()}")

    def running_trial(self, job_ids: list[int]) -> dict | None:
        """A running trial (a long one: its result comes within seconds, whatever the load)."""
        for job_id in job_ids:
            for t in self.trials(job_id):
                if t["state"] == "running":
                    return t
        return None

    def check_succeeded(self, job_ids: list[int], timeout: float = 150) -> None:
        """Each job succeeded with every trial at attempt 1 and its checkpoint on disk; no
        file of the artifact store without its row, no row without its file."""
        for job_id in job_ids:
            job = self.wait_until(
                lambda j=job_id: (r := self.client.get(f"/v1/jobs/{j}").json())["state"]
                in ("succeeded", "failed", "cancelled") and r,
                timeout,
                f"job {job_id} finished",
            )
            trials = self.trials(job_id)
            assert job["state"] == "succeeded", job
            total = job["spec"]["budget"]["max_trials"]
            assert [t["number"] for t in trials] == list(range(total))
            assert [(t["state"], t["attempt"], t["attempts"]) for t in trials] == [
                ("succeeded", 1, [])
            ] * total, trials
        with psycopg.connect(self.pg.dsn) as conn:
            rows = {p for (p,) in conn.execute("SELECT path FROM artifacts")}
        root = Path(self.stack.env["AUTOCOMPRESS_ARTIFACT_ROOT"])
        files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert files == rows, (files - rows, rows - files)

    def close(self) -> None:
        self.client.close()
        self.stack.close()
        self.redis.close()
        self.pg.close()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, digits_model: Path):  # noqa: ANN201
    stack = Faults(tmp_path_factory.mktemp("faults"), digits_model)
    yield stack
    stack.close()


def _report(fault: str, stall: float) -> None:
    print(f"STALL {fault}: {stall:.1f} s")
    assert stall < STALL_BOUND, f"{fault}: the worker sat idle {stall:.1f} s with work waiting"


def test_redis_restarted_with_trial_messages_in_its_queue(faults: Faults) -> None:
    jobs = [faults.submit(seed=s) for s in (1, 2, 3)]  # one trial in flight per job
    monitor = Monitor(faults.pg, jobs)
    monitor.start()
    faults.wait_until(
        lambda: faults.redis.queued() >= 2
        and sum(t["state"] == "running" for j in jobs for t in faults.trials(j)) == 1,
        120,
        "one trial running and two trial messages waiting",
    )
    t0 = time.monotonic()
    faults.redis.restart()  # no persistence: the two waiting messages are gone
    assert faults.redis.queued() == 0
    faults.check_succeeded(jobs)
    monitor.stop()
    _report("redis restarted, 2 messages queued", monitor.stall_after(t0))


def _a_trial_finishing(faults: Faults) -> tuple[int, Monitor, dict]:
    """A job of two long trials, watched, and its first trial running."""
    job = faults.submit(trials=2, epochs=40)
    monitor = Monitor(faults.pg, [job])
    monitor.start()
    finishing = faults.wait_until(lambda: faults.running_trial([job]), 120, "a trial running")
    return job, monitor, finishing


def test_redis_stopped_while_a_trial_finishes(faults: Faults) -> None:
    job, monitor, finishing = _a_trial_finishing(faults)
    t0 = time.monotonic()
    faults.redis.stop()
    # the trial's result commits, advance_job commits the next trial and cannot send it
    faults.wait_until(
        lambda: next(t for t in faults.trials(job) if t["id"] == finishing["id"])["state"]
        == "succeeded"
        and "left to the sweeper" in faults.worker.output(),
        60,
        "the result written and the next message refused",
    )
    faults.redis.start()
    faults.check_succeeded([job])
    monitor.stop()
    _report("redis stopped while a trial finished", monitor.stall_after(t0))


def test_postgres_stopped_as_a_trial_writes_its_result(faults: Faults) -> None:
    job, monitor, _ = _a_trial_finishing(faults)
    t0 = time.monotonic()
    faults.pg.stop()
    deadline = time.monotonic() + 20
    while "result of trial" not in faults.worker.output():  # its write is being retried
        assert time.monotonic() < deadline, faults.worker.output()
        time.sleep(0.1)
    down = time.monotonic() - t0
    faults.pg.start()
    faults.check_succeeded([job])  # the result was retried, not turned into a failed trial
    monitor.stop()
    print(f"postgres was down {down:.1f} s")
    _report("postgres stopped as a result was written", monitor.stall_after(t0))


def test_api_killed_with_sigkill_mid_job(faults: Faults) -> None:
    job = faults.submit(trials=2)
    monitor = Monitor(faults.pg, [job])
    monitor.start()
    faults.wait_until(
        lambda: any(t["state"] == "running" for t in faults.trials(job)), 120, "a trial running"
    )
    t0 = time.monotonic()
    faults.api.kill()  # SIGKILL: no shutdown of any kind
    faults.api = faults.stack.serve()
    faults.check_succeeded([job])
    monitor.stop()
    _report("api killed with SIGKILL", monitor.stall_after(t0))


def test_submission_with_redis_down_is_accepted_once_and_runs_later(faults: Faults) -> None:
    faults.redis.stop()
    spec = faults.spec(seed=9)
    headers = {"Idempotency-Key": "faults-redis-down"}
    first = faults.client.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == 202, first.text  # committed: never a 500
    again = faults.client.post("/v1/jobs", json=spec, headers=headers)  # the client retries
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    other = faults.client.post("/v1/jobs", json=faults.spec(seed=10), headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.text
    t0 = time.monotonic()
    faults.redis.start()  # the sweeper advances the job nobody was told about
    faults.check_succeeded([first.json()["id"]])
    print(f"STALL submission with redis down: {time.monotonic() - t0:.1f} s to finish")


def test_a_small_job_behind_a_large_one_starts_within_one_trial(faults: Faults) -> None:
    large = faults.submit(trials=6, parallel=8, seed=4)  # at most 1 in flight (the per-job cap)
    faults.wait_until(
        lambda: any(t["state"] == "running" for t in faults.trials(large)), 120, "large running"
    )
    small = faults.submit(trials=2, parallel=2, seed=5)
    first = faults.wait_until(
        lambda: next((t for t in faults.trials(small) if t["started_at"]), None),
        120,
        "the small job's first trial started",
    )
    small_job = faults.client.get(f"/v1/jobs/{small}").json()
    durations = [
        _seconds(t["finished_at"]) - _seconds(t["started_at"])
        for t in faults.trials(large)
        if t["finished_at"]
    ]
    waited = _seconds(first["started_at"]) - _seconds(small_job["started_at"])
    print(f"small job's first trial waited {waited:.1f} s; a trial takes {max(durations):.1f} s")
    assert waited <= max(durations) + 3.0, (waited, durations)
    faults.check_succeeded([large, small])


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()
