"""Server-Sent Events parsing: lines of an `text/event-stream` body into `Event`s."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: `id` (resume after it), `kind` (e.g. trial.finished) and
    `data` (the change, as JSON: job_id, trial_id, state, progress, stage, metrics, ...)."""

    id: int
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of an SSE body given line by line (comments and `retry:` are skipped)."""
    ident, kind, data = None, "message", []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                payload = json.loads("\n".join(data))
                yield Event(int(ident) if ident else int(payload.get("id", 0)), kind, payload)
            ident, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            ident = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)
