"""`Client`: the autocompress HTTP API from Python, over HTTP only (httpx).

    from client import Client
    with Client("http://127.0.0.1:8000", api_key="ac_...") as api:
        model = api.register_model("w.safetensors", "lenet-300-100")
        job = api.submit({...})
        for event in api.events(job["id"]):
            print(event.kind, event.data)
        api.download(api.job(job["id"])["best"]["id"], "best.acpk")

Every error answer of the server raises `ApiError` with its status, `detail` and `errors`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from client.sse import Event, parse_events

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, KEY_ENV = "AUTOCOMPRESS_URL", "AUTOCOMPRESS_API_KEY"
JOB_FINISHED = "job.finished"


class ApiError(Exception):
    """An error answer of the server: its HTTP status, `detail` and `errors` [{field, message}]."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.errors = status, detail, errors or []

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            return cls(response.status_code, response.text or response.reason_phrase)
        if isinstance(body, dict):
            return cls(response.status_code, str(body.get("detail", body)), body.get("errors"))
        return cls(response.status_code, str(body))


class Client:
    """The API at `url` with `api_key` (defaults: AUTOCOMPRESS_URL, AUTOCOMPRESS_API_KEY)."""

    def __init__(
        self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get(KEY_ENV) or None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _list(self, path: str, params: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        """Every row of a paginated list (following `X-Next-Cursor`), or the first `limit`."""
        params = {k: v for k, v in params.items() if v is not None}
        rows: list[dict[str, Any]] = []
        while True:
            page = {**params, "limit": min(limit - len(rows), 500) if limit else 500}
            response = self._request("GET", path, params=page)
            rows += response.json()
            cursor = response.headers.get("x-next-cursor")
            if not cursor or (limit and len(rows) >= limit):
                return rows[:limit] if limit else rows
            params["cursor"] = cursor

    def _save(self, path: str, output: str | Path | None, default_name: str, **kwargs: Any) -> Path:
        """Stream a file answer to `output` (a file, a folder, or the server's file name)."""
        with self._http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            name = _filename(response.headers.get("content-disposition", "")) or default_name
            target = Path(output) if output else Path(name)
            if target.is_dir():
                target = target / name
            with open(target, "wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        return target

    # --- resources --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def register_model(
        self,
        weights: str | Path | None,
        architecture: str,
        config: dict[str, Any] | None = None,
        name: str = "",
        *,
        input_shape: list[int] | None = None,
        input_dtype: str | None = None,
        key_map: dict[str, Any] | None = None,
        program: str | Path | None = None,
    ) -> dict[str, Any]:
        """Register a trained model: ``architecture`` (``source:name``), its config and
        safetensors ``weights``; ``input_shape`` / ``input_dtype`` / ``key_map`` as the form
        fields of ``POST /v1/models``; ``program`` a ``torch.export.save`` archive for
        ``export:`` (its weights are its own, so ``weights`` may be None)."""
        form = {"architecture": architecture, "config": json.dumps(config or {}), "name": name}
        for key, value in (("input_shape", input_shape), ("key_map", key_map)):
            if value is not None:
                form[key] = json.dumps(value)
        if input_dtype is not None:
            form["input_dtype"] = input_dtype
        with contextlib.ExitStack() as stack:
            files = {
                field: (Path(path).name, stack.enter_context(open(path, "rb")), "application/octet-stream")
                for field, path in (("weights", weights), ("program", program))
                if path is not None
            }
            return self._request("POST", "/v1/models", data=form, files=files).json()

    def models(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._list("/v1/models", {}, limit)

    def model(self, model_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{model_id}").json()

    def upload_dataset(self, path: str | Path) -> dict[str, Any]:
        """Upload an .npz (x_train, y_train, x_val, y_val); the answer's `ref` is for jobs."""
        with open(path, "rb") as fh:
            files = {"file": (Path(path).name, fh, "application/octet-stream")}
            return self._request("POST", "/v1/datasets", files=files).json()

    def datasets(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._list("/v1/datasets", {}, limit)

    def submit(self, spec: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Submit a job (a dict, or the path of a JSON file); the answer has its `id`."""
        if not isinstance(spec, dict):
            spec = json.loads(Path(spec).read_text())
        return self._request("POST", "/v1/jobs", json=spec).json()

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The caller's jobs, newest first (all of them, or the first `limit`)."""
        return self._list("/v1/jobs", {"state": state}, limit)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def trials(self, job_id: int, state: str | None = None) -> list[dict[str, Any]]:
        return self._list(f"/v1/jobs/{job_id}/trials", {"state": state}, None)

    def trial(self, trial_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/trials/{trial_id}").json()

    def pareto(self, job_id: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}/pareto").json()

    def report_url(self, job_id: int) -> str:
        """The address of the job's report page."""
        return f"{self.url}/v1/jobs/{job_id}/report"

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def download(self, trial_id: int, output: str | Path | None = None) -> Path:
        """The trial's packed checkpoint, written to `output` (default trial-<id>.acpk)."""
        return self._save(
            f"/v1/trials/{trial_id}/checkpoint", output, f"trial-{trial_id}.acpk"
        )

    def export(self, trial_id: int, format: str = "onnx", output: str | Path | None = None) -> Path:
        """The trial's model exported by the server in `format`, written to `output`."""
        return self._save(
            f"/v1/trials/{trial_id}/export",
            output,
            f"trial-{trial_id}.{format}",
            params={"format": format},
        )

    # --- events -----------------------------------------------------------------------------

    def events(
        self, job_id: int, last_event_id: int | None = None, *, retries: int = 5
    ) -> Iterator[Event]:
        """The job's events as they happen, until `job.finished`; a dropped connection is
        resumed from the last event seen (Last-Event-ID), up to `retries` times in a row."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(
                        self._http.timeout.connect, read=None)
                ) as response:  # fmt: skip
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError.from_response(response)
                    for event in parse_events(response.iter_lines()):
                        failures = 0
                        last_event_id = event.id
                        yield event
                        if event.kind == JOB_FINISHED:
                            return
                return  # the server ended the stream: the job was already finished
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > retries:
                    raise
                time.sleep(min(2.0, 0.2 * failures))

    def wait(self, job_id: int) -> dict[str, Any]:
        """Block until the job is finished (following its events); its final state."""
        for _event in self.events(job_id):
            pass
        return self.job(job_id)


def _filename(disposition: str) -> str | None:
    match = re.search(r'filename="?([^";]+)"?', disposition)
    return Path(match.group(1)).name if match else None
