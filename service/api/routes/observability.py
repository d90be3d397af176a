"""`/metrics` (Prometheus) and `/readyz` (database and, distributed, broker reachable).

The metrics are read from the database at scrape time (the rows are the truth, and trials run
in other processes), by a collector registered on a registry of this app:

| metric | type | what |
|---|---|---|
| `autocompress_jobs{state}` | gauge | jobs by state |
| `autocompress_trials{state}` | gauge | trials by state |
| `autocompress_queue_depth` | gauge | queued trials (waiting for a worker) |
| `autocompress_trial_duration_seconds` | histogram | started to finished, of finished trials |
| `autocompress_worker_heartbeat_age_seconds` | gauge | age of the freshest heartbeat of a running trial (absent when none runs) |
| `autocompress_trials_retried` | gauge | trials re-run after a lost worker (attempt > 1) |
| `autocompress_trial_retries` | gauge | re-runs in all (the sum of attempt - 1) |
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from service.core.db import Job, Trial, as_utc, db_now, session_factory
from service.core.settings import Settings

router = APIRouter(tags=["meta"])

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)


class DatabaseCollector(Collector):
    """Jobs and trials as Prometheus metrics, counted in the database at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with session_factory(self.settings.database_url)() as session:
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            trials = dict(
                session.execute(select(Trial.state, func.count()).group_by(Trial.state)).all()
            )
            finished = session.execute(
                select(Trial.started_at, Trial.finished_at).where(
                    Trial.state.in_(("succeeded", "failed")),
                    Trial.started_at.is_not(None),
                    Trial.finished_at.is_not(None),
                )
            ).all()
            latest_lease = session.execute(
                select(func.max(Trial.lease_expires_at)).where(Trial.state == "running")
            ).scalar_one_or_none()
            retried, retries = session.execute(
                select(
                    func.count().filter(Trial.attempt > 1),
                    func.coalesce(func.sum(Trial.attempt - 1), 0),
                )
            ).one()
            now = db_now(session)
        yield _by_state("autocompress_jobs", "Jobs by state.", jobs)
        yield _by_state("autocompress_trials", "Trials by state.", trials)
        yield GaugeMetricFamily(
            "autocompress_queue_depth",
            "Trials queued, waiting for a worker.",
            value=trials.get("queued", 0),
        )
        durations = [(as_utc(end) - as_utc(start)).total_seconds() for start, end in finished]
        buckets = [(str(le), sum(d <= le for d in durations)) for le in DURATION_BUCKETS]
        yield HistogramMetricFamily(
            "autocompress_trial_duration_seconds",
            "Wall time of finished trials, started to finished.",
            buckets=[*buckets, ("+Inf", len(durations))],
            sum_value=sum(durations),
        )
        age = GaugeMetricFamily(
            "autocompress_worker_heartbeat_age_seconds",
            "Seconds since the freshest heartbeat of a running trial (absent when none runs).",
        )
        if latest_lease is not None:
            beat = as_utc(latest_lease) - timedelta(seconds=self.settings.lease_seconds)
            age.add_metric([], max(0.0, (now - beat).total_seconds()))
        yield age
        yield GaugeMetricFamily(
            "autocompress_trials_retried",
            "Trials re-run after a lost worker (attempt > 1).",
            value=retried,
        )
        yield GaugeMetricFamily(
            "autocompress_trial_retries",
            "Re-runs of trials in all (the sum of attempt - 1).",
            value=retries,
        )


def _by_state(name: str, documentation: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state in STATES:
        family.add_metric([state], counts.get(state, 0))
    return family


def metrics_registry(settings: Settings) -> CollectorRegistry:
    """A registry of this app's own: the database collector (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(settings))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: jobs and trials by state, queue depth, trial durations, the age of
    the last worker heartbeat, trial retries."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


def _check_database(settings: Settings) -> str | None:
    try:
        with session_factory(settings.database_url)() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; say which
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def _check_broker(settings: Settings) -> str | None:
    if settings.embedded:
        return None
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return f"cannot check a broker at {settings.broker_url.split(':', 1)[0]}://; use redis"
    try:
        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=2, socket_connect_timeout=2
        )
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: `errors` names the part that is not reachable."}},
)
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers and, in distributed mode, the broker does (200), else
    503 with `{"detail", "errors": [{"field": "database"|"broker", "message"}]}`."""
    settings: Settings = request.app.state.settings
    errors = [
        {"field": part, "message": message}
        for part, message in (
            ("database", _check_database(settings)),
            ("broker", _check_broker(settings)),
        )
        if message is not None
    ]
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": f"not ready: {detail}", "errors": errors}, status_code=503)
    mode = "embedded" if settings.embedded else "distributed"
    return JSONResponse({"status": "ready", "mode": mode})
