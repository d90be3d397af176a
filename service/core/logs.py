"""Logging of the API and the workers: plain lines, or one JSON object per line.

`configure_logging(settings, level)` is called once per process (the CLI for `serve` and every
command, the Celery worker through its `setup_logging` signal). With
`AUTOCOMPRESS_LOG_FORMAT=json` each record is a JSON object (python-json-logger) with
`time`, `level`, `logger`, `message` and whatever the call passed in `extra=`; the workers
pass `job_id` and `trial_id`, so a log shipper can follow one job across processes.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from service.core.settings import Settings

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of `log_format` (`plain` or `json`)."""
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=False)
    return logging.Formatter(PLAIN_FORMAT)


def configure_logging(settings: Settings, level: int | str = logging.INFO) -> None:
    """One handler on the root logger, to stderr, in the settings' `log_format`; the servers'
    own loggers (uvicorn, celery) propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
