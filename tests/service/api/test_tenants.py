"""Tenants over real HTTP (uvicorn, keys required): each key sees only its own models,
datasets, jobs, trials, checkpoints and event streams (another's are 404); an admin key sees
all; a revoked key gets 401; list endpoints page with cursors and filter by state."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest

from client import ApiError, Client
from tests.conftest import DIGITS_CONFIG, DIGITS_JOB_SPEC


def create_key(stack, name: str, *flags: str) -> dict:  # noqa: ANN001
    done = stack.cli("apikey", "create", "--name", name, *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.random((20, 8), dtype=np.float32), y_train=rng.integers(0, 2, 20),
             x_val=rng.random((10, 8), dtype=np.float32), y_val=rng.integers(0, 2, 10))  # fmt: skip
    return buf.getvalue()


@pytest.fixture(scope="module")
def tenants(module_stack, digits_model, tmp_path_factory):  # noqa: ANN001, ANN201
    """A server requiring keys; keys a, b and an admin; a's model, dataset and finished job."""
    stack = module_stack(AUTOCOMPRESS_REQUIRE_API_KEY="true", AUTOCOMPRESS_SECRET_KEY="tenant-test")
    keys = {name: create_key(stack, name) for name in ("a", "b")}
    keys["admin"] = create_key(stack, "root", "--admin")
    assert keys["admin"]["admin"] is True and keys["a"]["admin"] is False
    stack.serve()
    data = tmp_path_factory.mktemp("tenant-data") / "d.npz"
    data.write_bytes(npz_bytes())
    with Client(stack.url, keys["a"]["token"]) as a:
        model = a.register_model(digits_model, "mlp", DIGITS_CONFIG)
        dataset = a.upload_dataset(data)
        spec = {**DIGITS_JOB_SPEC, "model_id": model["id"], "budget": {"max_trials": 1},
                "finetune": {"method": "none"}}  # fmt: skip
        job = a.wait(a.submit(spec)["id"])
    assert job["state"] == "succeeded", job
    own = {"model": model, "dataset": dataset, "job": job, "spec": spec, "weights": digits_model}
    return stack, keys, own


def http(stack, key: dict) -> httpx.Client:  # noqa: ANN001
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key['token']}"}, timeout=30)


def test_another_key_gets_404_for_every_row_of_a_tenant(tenants) -> None:
    stack, keys, own = tenants
    job_id, trial_id = own["job"]["id"], own["job"]["best"]["id"]
    paths = [
        f"/v1/models/{own['model']['id']}", f"/v1/datasets/{own['dataset']['id']}",
        f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/trials", f"/v1/jobs/{job_id}/pareto",
        f"/v1/jobs/{job_id}/pareto.svg", f"/v1/jobs/{job_id}/events", f"/v1/trials/{trial_id}",
        f"/v1/trials/{trial_id}/checkpoint",
    ]  # fmt: skip
    with http(stack, keys["b"]) as b, http(stack, keys["a"]) as a:
        for path in paths:
            assert a.get(path).status_code == 200, path
            theirs = b.get(path)
            assert theirs.status_code == 404 and "not found" in theirs.json()["detail"], path
        assert b.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
        assert b.get(f"/v1/jobs/{job_id}").json()["detail"] == f"job {job_id} not found"  # as if absent
        for listing in ("/v1/models", "/v1/datasets", "/v1/jobs"):
            assert b.get(listing).json() == [], listing
            assert len(a.get(listing).json()) == 1, listing
        stolen = b.post("/v1/jobs", json=own["spec"])
        assert stolen.status_code == 422 and stolen.json()["errors"][0]["field"] == "body.model_id"
    with Client(stack.url, keys["b"]["token"]) as b_client:
        model = b_client.register_model(own["weights"], "mlp", DIGITS_CONFIG)
        spec = {**own["spec"], "model_id": model["id"], "dataset": own["dataset"]["ref"]}
        with pytest.raises(ApiError) as refused:
            b_client.submit(spec)
        assert refused.value.status == 422 and refused.value.errors[0]["field"] == "body.dataset"


def test_the_admin_key_sees_every_tenant(tenants) -> None:
    stack, keys, own = tenants
    with http(stack, keys["admin"]) as admin:
        assert own["job"]["id"] in [j["id"] for j in admin.get("/v1/jobs").json()]
        assert admin.get(f"/v1/trials/{own['job']['best']['id']}/checkpoint").status_code == 200
        assert len(admin.get("/v1/models").json()) >= 1


def test_a_revoked_key_gets_401(tenants) -> None:
    stack, _, _ = tenants
    key = create_key(stack, "short-lived")
    with http(stack, key) as client:
        assert client.get("/v1/jobs").status_code == 200
        done = stack.cli("apikey", "revoke", str(key["id"]))
        assert done.returncode == 0, done.stderr
        listed = [json.loads(line) for line in stack.cli("apikey", "list").stdout.splitlines()]
        assert {k["id"]: k["revoked"] for k in listed}[key["id"]] is True
        reply = client.get("/v1/jobs")
        assert reply.status_code == 401 and "revoked" in reply.json()["detail"]
    with httpx.Client(base_url=stack.url) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401


def test_cursors_walk_a_list_without_repeats_and_state_filters(tenants) -> None:
    stack, keys, own = tenants
    key = create_key(stack, "pager")
    with Client(stack.url, key["token"]) as api, http(stack, key) as raw:
        made = [api.register_model(own["weights"], "mlp", DIGITS_CONFIG)["id"] for _ in range(5)]
        seen, cursor, pages = [], None, 0
        while True:
            reply = raw.get("/v1/models", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
            assert reply.status_code == 200
            seen += [m["id"] for m in reply.json()]
            pages += 1
            cursor = reply.headers.get("x-next-cursor")
            if cursor is None:
                break
            assert 'rel="next"' in reply.headers["link"]
        assert pages == 3 and seen == sorted(made, reverse=True)  # newest first, each once
        assert [m["id"] for m in api.models()] == seen  # the client follows the cursors
        assert [m["id"] for m in api.models(limit=3)] == seen[:3]
        for params, field in (({"limit": 0}, "query.limit"), ({"cursor": "abc"}, "query.cursor"),
                              ({"state": "sleeping"}, "query.state")):  # fmt: skip
            bad = raw.get("/v1/jobs", params=params)
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == field, params
    with Client(stack.url, keys["a"]["token"]) as a:
        assert [j["id"] for j in a.jobs(state="succeeded")] == [own["job"]["id"]]
        assert a.jobs(state="running") == []
        assert [t["state"] for t in a.trials(own["job"]["id"], state="succeeded")] == ["succeeded"]
        assert a.trials(own["job"]["id"], state="failed") == []
