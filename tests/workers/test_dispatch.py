"""workers.dispatch: the in-process dispatcher runs work only between start() and shutdown()."""

from __future__ import annotations

import threading
from pathlib import Path

from service.core.settings import Settings
from workers import jobs
from workers.dispatch import LocalDispatcher


def test_local_dispatcher_runs_tasks_on_its_threads_while_started(
    tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    ran: list[tuple[str, int]] = []
    done = threading.Event()

    def fake_advance(settings: Settings, dispatcher: LocalDispatcher, job_id: int) -> None:
        ran.append((threading.current_thread().name, job_id))
        done.set()

    monkeypatch.setattr(jobs, "advance_job", fake_advance)
    dispatcher = LocalDispatcher(Settings(home=tmp_path))
    dispatcher.advance_job(1)  # not started: dropped (the start-up sweep re-sends it)
    dispatcher.start()
    dispatcher.advance_job(2)
    assert done.wait(10)
    assert [job for _, job in ran] == [2] and ran[0][0].startswith("advance")
    dispatcher.shutdown()
    dispatcher.advance_job(3)  # after shut-down: dropped
    assert [job for _, job in ran] == [2]
