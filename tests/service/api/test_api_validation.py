"""The API refuses bad input with a 422 that names the field, and loses nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from operators import build_model
from service.core.settings import Settings
from service.main import create_app

CONFIG = {"in_features": 64, "hidden": [16], "num_classes": 10}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", data_roots=[tmp_path / "data"])
    (tmp_path / "data").mkdir()
    with TestClient(create_app(settings)) as c:
        yield c


def weights_bytes(config: dict = CONFIG) -> bytes:
    model = build_model("mlp", config)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def register(client: TestClient, data: bytes | None = None, filename: str = "w.safetensors", **form):
    form = {"architecture": "mlp", "config": json.dumps(CONFIG), **form}
    files = {"weights": (filename, io.BytesIO(data if data is not None else weights_bytes()))}
    return client.post("/v1/models", data=form, files=files)


def job(model_id: int, **overrides) -> dict:
    spec = {
        "model_id": model_id,
        "dataset": "builtin:digits",
        "objective": {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]},
        "search_space": {"strategies": [{"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.1, "max": 0.9}}]}]},
        "budget": {"max_trials": 2},
    }
    spec.update(overrides)
    return spec


def fields(reply) -> list[str]:  # noqa: ANN001
    assert reply.status_code == 422, reply.text
    return [e["field"] for e in reply.json()["errors"]]


def test_register_model_and_read_it_back(client: TestClient) -> None:
    reply = register(client, name="small")
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert client.get(f"/v1/models/{body['id']}").json()["name"] == "small"


def test_unknown_architecture_names_the_field(client: TestClient) -> None:
    assert fields(register(client, architecture="resnet-9000")) == ["architecture"]


def test_weights_that_do_not_fit_are_refused(client: TestClient) -> None:
    other = weights_bytes({"in_features": 64, "hidden": [8], "num_classes": 10})
    assert fields(register(client, data=other)) == ["weights"]


def test_garbage_weights_are_refused(client: TestClient) -> None:
    assert fields(register(client, data=b"not a safetensors file")) == ["weights"]


def test_pickle_upload_refused_unless_trusted(client: TestClient) -> None:
    buf = io.BytesIO()
    torch.save(build_model("mlp", CONFIG).state_dict(), buf)
    reply = register(client, data=buf.getvalue(), filename="w.pt")
    assert fields(reply) == ["weights"]
    assert "pickle" in reply.json()["detail"]


def test_job_validation_names_each_field(client: TestClient) -> None:
    model_id = register(client).json()["id"]
    cases = {
        "body.model_id": job(999),
        "body.dataset": job(model_id, dataset="ftp:x"),
        "body.budget.max_trials": job(model_id, budget={"max_trials": 0}),
        "body.finetune.method": job(model_id, finetune={"method": "magic"}),
        "body.bogus": job(model_id, bogus=1),
    }
    for field, spec in cases.items():
        assert field in fields(client.post("/v1/jobs", json=spec)), field
    bad_metric = job(model_id, objective={"maximize": "beauty"})
    got = fields(client.post("/v1/jobs", json=bad_metric))
    assert got and got[0].startswith("body.objective"), got
    bad_op = job(model_id, search_space={"strategies": [{"name": "x", "steps": [{"op": "shrink"}]}]})
    got = fields(client.post("/v1/jobs", json=bad_op))
    assert got[0].startswith("body.search_space.strategies[0].steps[0]"), got
    bad_range = job(
        model_id,
        search_space={"strategies": [{"name": "x", "steps": [{"op": "prune", "sparsity": {"min": 0.5, "max": 1.5}}]}]},
    )
    got = fields(client.post("/v1/jobs", json=bad_range))
    assert got[0].startswith("body.search_space.strategies[0].steps[0]"), got
    bad_schedule = job(
        model_id,
        search_space={"strategies": [{"name": "x", "steps": [
            {"op": "prune", "sparsity": 0.9, "schedule": {"stages": {"min": 0, "max": 3, "type": "int"}}}]}]},
    )  # fmt: skip
    got = fields(client.post("/v1/jobs", json=bad_schedule))
    assert got[0] == "body.search_space.strategies[0].steps[0].schedule.stages", got
    bad_stage_tune = job(
        model_id,
        search_space={"strategies": [{"name": "x", "steps": [
            {"op": "prune", "sparsity": 0.9, "finetune": {"method": "magic"}}]}]},
    )  # fmt: skip
    got = fields(client.post("/v1/jobs", json=bad_stage_tune))
    assert got[0] == "body.search_space.strategies[0].steps[0].finetune.method", got
    got = fields(client.post("/v1/jobs", json=job(model_id, search={"method": "magic"})))
    assert got[0].startswith("body.search"), got
    two_strategies = {"strategies": [
        {"name": "a", "steps": [{"op": "prune", "sparsity": {"min": 0.1, "max": 0.9}}]},
        {"name": "b", "steps": [{"op": "prune", "sparsity": {"min": 0.1, "max": 0.9}}]},
    ]}
    reply = client.post("/v1/jobs", json=job(model_id, search={"method": "two-phase"}, search_space=two_strategies))
    assert fields(reply)[0].startswith("body.search"), reply.text
    assert client.post("/v1/jobs", json=job(model_id, search={"method": "two-phase"})).status_code == 202
    assert len(client.get("/v1/jobs").json()) == 1  # only the valid job was created


def test_dataset_path_outside_the_data_roots_is_refused(client: TestClient, tmp_path: Path) -> None:
    model_id = register(client).json()["id"]
    (tmp_path / "secret.npz").write_bytes(b"x")
    for ref in ("npz:../secret.npz", f"npz:{tmp_path / 'secret.npz'}", "idx:/etc", "upload:99"):
        reply = client.post("/v1/jobs", json=job(model_id, dataset=ref))
        assert fields(reply) == ["body.dataset"], ref


def test_npz_dataset_in_a_data_root_over_the_element_limit_is_refused_at_submission(
    tmp_path: Path,
) -> None:
    import numpy as np

    settings = Settings(home=tmp_path / "home", data_roots=[tmp_path / "data"], max_dataset_elements=2000)
    (tmp_path / "data").mkdir()
    arrays = {"x_train": np.zeros((40, 64), np.float32), "y_train": np.zeros(40, np.int64),
              "x_val": np.zeros((10, 64), np.float32), "y_val": np.zeros(10, np.int64)}  # fmt: skip
    np.savez(tmp_path / "data" / "big.npz", **arrays)  # 3,250 elements
    arrays["x_train"] = arrays["x_train"][:8]
    arrays["y_train"] = arrays["y_train"][:8]
    np.savez(tmp_path / "data" / "small.npz", **arrays)  # 1,170 elements
    with TestClient(create_app(settings)) as c:
        model_id = register(c).json()["id"]
        reply = c.post("/v1/jobs", json=job(model_id, dataset="npz:big.npz"))
        assert fields(reply) == ["body.dataset"] and "more than the limit of 2000" in reply.text
        small = c.post("/v1/jobs", json=job(model_id, dataset="npz:small.npz"))
        assert small.status_code == 202, small.text


def test_unknown_ids_are_404_json(client: TestClient) -> None:
    for path in ("/v1/jobs/5", "/v1/jobs/5/trials", "/v1/trials/5", "/v1/trials/5/checkpoint", "/v1/models/5"):
        reply = client.get(path)
        assert reply.status_code == 404 and "not found" in reply.json()["detail"], path


def test_openapi_documents_the_job_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    job_schema = schema["components"]["schemas"]["JobCreate"]
    assert job_schema["examples"][0]["objective"]["maximize"] == "compression_ratio"
    assert "/v1/jobs/{job_id}/pareto.svg" in schema["paths"]


def test_a_job_without_search_space_gets_the_default_space_in_its_json(client: TestClient) -> None:
    model_id = register(client).json()["id"]
    spec = job(model_id)
    spec.pop("search_space", None)
    reply = client.post("/v1/jobs", json=spec)
    assert reply.status_code == 202, reply.text
    shown = client.get(reply.headers["Location"]).json()
    strategies = [s["name"] for s in shown["spec"]["search_space"]["strategies"]]
    assert strategies[:2] == ["deep-compression", "prune+fp16"], shown
