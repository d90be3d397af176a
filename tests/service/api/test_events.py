"""GET /v1/jobs/{id}/events over real HTTP (uvicorn, embedded): the trial and job events in
order, resumable with Last-Event-ID; progress.eta_seconds in the schema and a running
trial's stage (the ETA's arithmetic: tests/service/api/test_eta.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from client import Client, parse_events
from service.api.presenters import objective_of, trial_public
from service.core import repository
from service.core.db import Job, Trial, session_scope
from tests.conftest import DIGITS_JOB_SPEC, serve_digits_model


@pytest.fixture(scope="module")
def finished_stream(module_stack, digits_model):  # noqa: ANN001, ANN201
    """(server, job id, the events read live from the job's stream until it ended)."""
    stack = module_stack()
    model_id = serve_digits_model(stack, digits_model)
    with Client(stack.url) as api:
        spec = {
            **DIGITS_JOB_SPEC,
            "model_id": model_id,
            "finetune": {"method": "masked", "epochs": 20, "batch_size": 32},
            "budget": {"max_trials": 2, "max_parallel": 1},
        }
        job_id = api.submit(spec)["id"]
    seen, running_trials = [], []
    with httpx.Client(base_url=stack.url, timeout=httpx.Timeout(30, read=120)) as http:
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            for event in parse_events(reply.iter_lines()):
                seen.append(event)
                if event.kind == "trial.progress":  # what the trial JSON says meanwhile
                    running_trials.append(http.get(f"/v1/trials/{event.data['trial_id']}").json())
    return stack, job_id, seen, running_trials


def test_events_stream_every_trial_change_then_ends_with_job_finished(finished_stream) -> None:
    stack, job_id, events, _ = finished_stream
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "SSE ids are strictly increasing"
    assert events[-1].kind == "job.finished" and events[-1].data["state"] == "succeeded"
    assert events[0].kind == "job.started"
    for number in (0, 1):
        kinds = [e.kind for e in events if e.data.get("number") == number]
        assert kinds[:2] == ["trial.queued", "trial.started"], kinds
        assert kinds[-1] == "trial.finished" and set(kinds[2:-1]) <= {"trial.progress"}, kinds
        finished = next(e for e in events if e.kind == "trial.finished" and e.data["number"] == number)
        assert finished.data["metrics"]["accuracy"] > 0.5 and finished.data["state"] == "succeeded"
    assert all(e.data["job_id"] == job_id for e in events)


def test_a_client_resumes_after_last_event_id_with_exactly_what_it_missed(finished_stream) -> None:
    stack, job_id, events, _ = finished_stream
    cut = events[2].id
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(cut)}) as reply:
            resumed = list(parse_events(reply.iter_lines()))
        assert resumed == events[3:]
        with http.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": events[-1].id}) as reply:
            assert list(parse_events(reply.iter_lines())) == []  # finished: the stream just ends
        bad = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "header.Last-Event-ID"
        assert http.get("/v1/jobs/999/events").status_code == 404
    with Client(stack.url) as api:  # the client's iterator resumes the same way
        assert list(api.events(job_id, last_event_id=cut)) == events[3:]


def test_running_trials_report_stage_and_epoch_and_the_job_its_eta(finished_stream) -> None:
    stack, job_id, events, running_trials = finished_stream
    progress = [e for e in events if e.kind == "trial.progress"]
    longest = max(e.data["metrics"]["duration_s"] for e in events if e.kind == "trial.finished")
    if longest > 2.5:  # a heartbeat (every 1 s) surely came while it ran and saw a stage
        assert progress, f"no trial.progress event in a trial of {longest:.1f} s"
    assert {e.data["stage"] for e in progress} <= {"load", "apply", "finetune", "save", "measure"}
    assert all(e.data["stage"] and 0 <= e.data["progress"] <= 1 for e in progress)
    running = [t for t in running_trials if t["state"] == "running"]
    if running:  # the trial may have finished between its event and our GET
        assert running[0]["stage"] in ("load", "apply", "finetune", "save", "measure")
        assert 0 <= running[0]["epoch"] <= 20
    with Client(stack.url) as api:
        job = api.job(job_id)
        assert job["progress"]["eta_seconds"] == 0.0
        assert all(t["stage"] is None for t in api.trials(job_id))  # finished: no stage


def test_a_heartbeat_writes_stage_and_progress_once_per_change(digits_job) -> None:
    settings, job_id = digits_job
    with session_scope(settings.database_url) as session:
        trial = repository.add_trial(session, job_id, 0, strategy="p", params={}, steps=[], reason=None)
        trial_id = trial.id
    with session_scope(settings.database_url) as session:
        assert repository.claim_trial(session, trial_id, 1, lease_seconds=60, worker="w")
        for stage, progress in (("apply", 0.0), ("finetune", 0.0), ("finetune", 0.5), ("finetune", 0.5)):
            assert repository.renew_lease(session, trial_id, 1, lease_seconds=60, progress=progress, stage=stage)
        assert repository.finish_trial(session, trial_id, 1, "failed", error="boom")
    with session_scope(settings.database_url) as session:
        events = repository.events_after(session, job_id, 0)
        shown = trial_public(session.get(Trial, trial_id), objective_of(session.get(Job, job_id)), 2.0)
    assert [(e.kind, e.data["stage"], e.data["progress"]) for e in events] == [
        ("trial.queued", None, 0.0), ("trial.started", None, 0.0), ("trial.progress", "apply", 0.0),
        ("trial.progress", "finetune", 0.0), ("trial.progress", "finetune", 0.5),
        ("trial.failed", "finetune", 0.5),
    ]  # fmt: skip
    assert events[-1].data["error"] == "boom" and shown.epoch == 1.0 and shown.stage is None


def test_event_kinds_are_documented_in_the_openapi_schema(finished_stream) -> None:
    stack, *_ = finished_stream
    schema = httpx.get(f"{stack.url}/openapi.json").json()
    described = json.dumps(schema["paths"]["/v1/jobs/{job_id}/events"])
    for kind in ("trial.queued", "trial.started", "trial.progress", "trial.finished", "job.finished"):
        assert kind in described
    assert "eta_seconds" in schema["components"]["schemas"]["Progress"]["properties"]
