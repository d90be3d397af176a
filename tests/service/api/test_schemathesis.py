"""Schemathesis against the real HTTP API (uvicorn on a free port, the app of
`service.main.create_app`, embedded mode in a temporary home): valid and invalid requests
generated from the OpenAPI schema, a few per operation with a fixed seed, must draw no server
error and only answers the schema documents (status code, content type, body, headers).

Every operation is fuzzed. None starts expensive work: with no model registered (random bytes
are never a loadable safetensors file) every `POST /v1/jobs` fails validation, and model
registration is capped by `AUTOCOMPRESS_MAX_MODEL_PARAMS` before anything is built.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.core.settings import Settings
from service.main import create_app
from tests.conftest import free_port

EXAMPLES_PER_OPERATION = 8
SEED = 20261201
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": 30,
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES_PER_OPERATION,
            "deterministic": True,
        },
    }
)
answered: Counter[str] = Counter()  # "METHOD path status" -> count, reported at the end

# The app is built at import so that its schema parametrizes the test (nothing runs until the
# fixture serves it); the fixture checks that the served schema is this one.
HOME = Path(tempfile.mkdtemp(prefix="autocompress-schemathesis-"))
APP = create_app(Settings(home=HOME, max_upload_bytes=1 << 20))
schema = schemathesis.openapi.from_dict(APP.openapi(), config=CONFIG)


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/openapi.json").json() == APP.openapi()
    yield url
    server.should_exit = True
    thread.join(timeout=30)
    shutil.rmtree(HOME, ignore_errors=True)
    statuses: Counter[str] = Counter()
    for key, n in answered.items():
        statuses[key.rsplit(" ", 1)[1]] += n
    operations = {key.rsplit(" ", 1)[0] for key in answered}
    fives = sum(n for status, n in statuses.items() if status.startswith("5"))
    print(
        f"\nSCHEMATHESIS: {len(operations)} operations, {sum(statuses.values())} requests, "
        f"{fives} answered 5xx; by status: {dict(sorted(statuses.items()))}"
    )


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation_answers_as_documented_and_never_5xx(
    case: schemathesis.Case, api_url: str
) -> None:
    response = case.call(base_url=api_url, timeout=30)
    answered[f"{case.operation.label} {response.status_code}"] += 1
    case.validate_response(response, checks=CHECKS)
