"""`GET /v1/trials/{id}/export`: a finished trial of the real embedded server, exported as
ONNX and .pt2 over HTTP, runs like its packed checkpoint."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import torch

from operators import load_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CONFIG = {"in_features": 64, "hidden": [64], "num_classes": 10}
JOB = {
    "dataset": "builtin:digits",
    "objective": {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.5}]},
    "search_space": {"strategies": [{"name": "prune+int8", "steps": [
        {"op": "prune", "sparsity": {"min": 0.3, "max": 0.6}}, {"op": "quantize", "dtype": "int8"}]}]},
    "finetune": {"method": "none"},
    "budget": {"max_trials": 1, "max_parallel": 1},
    "seed": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def finished(module_stack, digits_model, tmp_path_factory):
    """(client, trial id, the trial's packed checkpoint file) of a finished embedded job."""
    stack = module_stack()
    stack.serve()
    client = httpx.Client(base_url=stack.url, timeout=60)
    with open(digits_model, "rb") as fh:
        reply = client.post("/v1/models", data={"architecture": "mlp", "config": json.dumps(CONFIG)},
                            files={"weights": ("m.safetensors", fh, "application/octet-stream")})  # fmt: skip
    assert reply.status_code == 201, reply.text
    reply = client.post("/v1/jobs", json={**JOB, "model_id": reply.json()["id"]})
    assert reply.status_code == 202, reply.text
    job_id, deadline = reply.json()["id"], time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["state"] == "succeeded", job
    trial_id = job["best"]["id"]
    checkpoint = tmp_path_factory.mktemp("export") / "trial.safetensors"
    checkpoint.write_bytes(client.get(f"/v1/trials/{trial_id}/checkpoint").content)
    yield client, trial_id, checkpoint
    client.close()


def test_export_onnx_of_a_finished_trial_runs_in_onnxruntime(finished, tmp_path):
    client, trial_id, checkpoint = finished
    reply = client.get(f"/v1/trials/{trial_id}/export", params={"format": "onnx"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    assert f'filename="trial-{trial_id}.onnx"' in reply.headers["content-disposition"]
    path = tmp_path / "trial.onnx"
    path.write_bytes(reply.content)
    model = onnx.load(str(path))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    packed, manifest = load_checkpoint(checkpoint, runtime="packed")
    x = torch.randn(4, *manifest["input_shape"])
    with torch.no_grad():
        expected = packed(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - expected).max() <= 1e-4
    again = client.get(f"/v1/trials/{trial_id}/export", params={"format": "onnx"})
    assert again.content == reply.content  # kept in the artifact store, not exported twice


def test_export_pt2_of_a_finished_trial_loads_with_torch_export(finished, tmp_path):
    client, trial_id, checkpoint = finished
    reply = client.get(f"/v1/trials/{trial_id}/export", params={"format": "pt2"})
    assert reply.status_code == 200, reply.text
    path = tmp_path / "trial.pt2"
    path.write_bytes(reply.content)
    packed, manifest = load_checkpoint(checkpoint, runtime="packed")
    x = torch.randn(3, *manifest["input_shape"])
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(path)).module()(x), packed(x),
                                   rtol=1e-5, atol=1e-4)  # fmt: skip


def test_export_of_an_unknown_format_or_trial_is_a_json_error(finished):
    client, trial_id, _ = finished
    reply = client.get(f"/v1/trials/{trial_id}/export", params={"format": "tflite"})
    assert reply.status_code == 422
    assert [e["field"] for e in reply.json()["errors"]] == ["query.format"]
    reply = client.get(f"/v1/trials/{trial_id}/export")
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "query.format"
    reply = client.get("/v1/trials/999999/export", params={"format": "onnx"})
    assert reply.status_code == 404 and reply.json()["detail"]
