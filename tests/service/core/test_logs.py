"""service.core.logs: with `log_format=json` every line is a JSON object carrying the record's
`extra=` fields (the workers' job_id and trial_id); plain lines otherwise."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from service.core.logs import configure_logging
from service.core.settings import Settings


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_job_and_trial_ids(restore_root_logger, capsys, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AUTOCOMPRESS_LOG_FORMAT", "json")
    configure_logging(Settings(), "INFO")
    logging.getLogger("workers.jobs").info("trial %s started", 7, extra={"job_id": 3, "trial_id": 7})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "trial 7 started"
    assert record["job_id"] == 3 and record["trial_id"] == 7
    assert record["level"] == "INFO" and record["logger"] == "workers.jobs" and record["time"]


def test_plain_lines_by_default(restore_root_logger, capsys) -> None:  # noqa: ANN001
    configure_logging(Settings(), "INFO")
    logging.getLogger("service").warning("hello")
    assert capsys.readouterr().err.strip().endswith("WARNING service: hello")


def test_unknown_log_format_is_refused(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AUTOCOMPRESS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
