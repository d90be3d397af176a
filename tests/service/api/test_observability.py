"""`/metrics` in the Prometheus text format, counted from the database; `/readyz` answers 200
when the database (and, distributed, the real Redis broker) answers, a JSON 503 naming the
part that does not."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.core.db import Trial, session_scope, upgrade
from service.core.settings import Settings
from tests.conftest import RecordingDispatcher, free_port
from tests.service.api.test_job_results import MIXED, add_job


def test_metrics_count_jobs_and_trials_from_the_database(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    job_id, trial_ids = add_job(settings, MIXED)
    with session_scope(settings.database_url) as session:
        retried = session.get(Trial, trial_ids[0])
        retried.attempt = 3
        queued = session.get(Trial, trial_ids[4])
        queued.state = "queued"
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}

    def value(name: str, **labels: str) -> float:
        samples = [s for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(samples) == 1, (name, labels, families[name].samples)
        return samples[0].value

    assert value("autocompress_jobs", state="succeeded") == 1
    assert value("autocompress_jobs", state="running") == 0
    assert value("autocompress_trials", state="succeeded") == 3
    assert value("autocompress_trials", state="failed") == 1
    assert value("autocompress_queue_depth") == 1
    assert value("autocompress_trials_retried") == 1 and value("autocompress_trial_retries") == 2
    assert families["autocompress_trial_duration_seconds"].type == "histogram"
    assert "autocompress_worker_heartbeat_age_seconds" in families


def test_readyz_embedded_is_ready(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(home=tmp_path), dispatcher=RecordingDispatcher())) as client:
        reply = client.get("/readyz")
        assert reply.status_code == 200 and reply.json() == {"status": "ready", "mode": "embedded"}
        assert client.get("/healthz").json()["status"] == "ok"


def test_readyz_distributed_checks_postgres_and_redis(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    upgrade(pg_url)
    ready = Settings(home=tmp_path, database_url=pg_url, broker_url=redis_url)
    with TestClient(create_app(ready, dispatcher=RecordingDispatcher())) as client:
        reply = client.get("/readyz")
        assert reply.status_code == 200 and reply.json()["mode"] == "distributed"
    broker_down = Settings(home=tmp_path, database_url=pg_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(broker_down, dispatcher=RecordingDispatcher())) as client:
        reply = client.get("/readyz")
    assert reply.status_code == 503
    body = reply.json()
    assert [e["field"] for e in body["errors"]] == ["broker"] and body["detail"].startswith("not ready: broker")
