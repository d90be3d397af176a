"""POST /v1/datasets: an .npz is checked without pickle and becomes `upload:<id>` for jobs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from operators import load_dataset
from service.core.datasets import resolve_reference
from service.core.db import session_scope
from service.core.settings import Settings
from service.main import create_app


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(home=tmp_path)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((40, 1, 8, 8), dtype=np.float32),
        "y_train": rng.integers(0, 3, 40),
        "x_val": rng.random((10, 1, 8, 8), dtype=np.float32),
        "y_val": rng.integers(0, 3, 10),
    }


def test_upload_then_resolve_and_load(app_client) -> None:  # noqa: ANN001
    client, settings = app_client
    reply = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(**good_arrays()))})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["ref"] == f"upload:{body['id']}"
    assert (body["train_samples"], body["val_samples"], body["input_shape"]) == (40, 10, [1, 8, 8])
    assert client.get(f"/v1/datasets/{body['id']}").json() == body
    with session_scope(settings.database_url) as session:
        ref, roots = resolve_reference(body["ref"], settings, session)
    assert len(load_dataset(ref, roots).y_val) == 10


def test_bad_uploads_are_refused_and_not_kept(app_client) -> None:  # noqa: ANN001
    client, settings = app_client
    missing = good_arrays()
    del missing["y_val"]
    pickled = {**good_arrays(), "x_train": np.array([{"a": 1}] * 40, dtype=object)}
    for data in (b"garbage", npz_bytes(**missing), npz_bytes(**pickled)):
        reply = client.post("/v1/datasets", files={"file": ("d.npz", data)})
        assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "file"
    assert not any((Path(settings.artifact_root) / "dataset").glob("*.npz"))


def test_uploads_over_the_limit_are_413_and_not_kept(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_upload_bytes=1000)
    with TestClient(create_app(settings)) as client:
        reply = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(**good_arrays()))})
        assert reply.status_code == 413 and reply.json()["errors"][0]["field"] == "file"
        reply = client.post(
            "/v1/models",
            data={"architecture": "mlp", "config": "{}"},
            files={"weights": ("w.safetensors", b"x" * 2000)},
        )
        assert reply.status_code == 413 and reply.json()["errors"][0]["field"] == "weights"
    assert not [p for p in Path(settings.artifact_root).rglob("*") if p.is_file()]
