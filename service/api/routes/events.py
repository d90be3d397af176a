"""`GET /v1/jobs/{id}/events`: the job's events as Server-Sent Events, resumable.

The events are rows of the `events` table, written by `service.core.repository` in the same
transaction as each change (trial queued, started, progress, finished, failed, cancelled; job
started, finished), so the stream is the same embedded and distributed. The SSE `id` is the
row's id: a client that reconnects with `Last-Event-ID` (or `?after=`) gets exactly what it
missed. The stream polls the table every `POLL_SECONDS`, sends a comment line as a heartbeat
every `HEARTBEAT_SECONDS`, and ends after `job.finished`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import CallerDep, JobId
from service.api.errors import Invalid
from service.api.tenancy import Caller, owned_job
from service.core import repository
from service.core.db import MAX_ID, TERMINAL_JOB_STATES, Event, Job, parse_row_id, session_scope

router = APIRouter(prefix="/v1/jobs", tags=["events"])

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
RETRY_MS = 2000  # what an EventSource waits before it reconnects


def _check_owned(url: str, caller: Caller, job_id: int) -> None:
    with session_scope(url) as session:
        owned_job(session, caller, job_id)


def _read(url: str, job_id: int, after: int) -> tuple[list[Event], bool]:
    """The events after `after`, and whether the job was finished before they were read (its
    `job.finished` event is then among them or already sent)."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        finished = job is None or job.state in TERMINAL_JOB_STATES
        return repository.events_after(session, job_id, after), finished


def format_event(event: Event) -> str:
    """One SSE message: id, event (the kind) and data (the JSON of the change)."""
    data = json.dumps({"id": event.id, "kind": event.kind, **event.data}, default=str)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


async def _stream(url: str, job_id: int, after: int, request: Request) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n: events of job {job_id} after {after}\n\n"
    beat = time.monotonic()
    while True:
        events, finished = await run_in_threadpool(_read, url, job_id, after)
        for event in events:
            after = event.id
            yield format_event(event)
            if event.kind == repository.JOB_FINISHED:
                return
        if events:
            beat = time.monotonic()
            continue  # there may be more right away
        if finished or await request.is_disconnected():
            return
        if time.monotonic() - beat >= HEARTBEAT_SECONDS:
            beat = time.monotonic()
            yield ": heartbeat\n\n"
        await asyncio.sleep(POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `id` (resume with Last-Event-ID), `event` "
            "(trial.queued, trial.started, trial.progress, trial.finished, trial.failed, "
            "trial.cancelled, job.started, job.finished) and `data` (JSON).",
        }
    },
)
async def job_events(
    job_id: JobId,
    request: Request,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None, Header(description="The id of the last event received; resume after it.")
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Same as Last-Event-ID, for clients that cannot set it."),
    ] = None,
) -> StreamingResponse:
    """The job's events as they happen, from the start (or after Last-Event-ID); the stream
    ends after `job.finished`."""
    resume = parse_row_id(last_event_id.strip()) if last_event_id is not None else None
    if last_event_id is not None and resume is None and last_event_id.strip() != "0":
        raise Invalid("header.Last-Event-ID", "must be the id of an event of this stream")
    start = (resume or 0) if last_event_id is not None else (after or 0)
    url = request.app.state.settings.database_url
    await run_in_threadpool(_check_owned, url, caller, job_id)
    return StreamingResponse(
        _stream(url, job_id, start, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
