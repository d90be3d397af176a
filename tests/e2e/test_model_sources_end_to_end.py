"""Model sources over real HTTP (embedded server, SQLite, in-process workers): a timm ResNet and a
Hugging Face ViT registered with weights saved by the test, a two-trial job each on
builtin:digits, their checkpoints downloaded and reloaded through the source; and hostile
registrations (over the parameter cap, unknown timm name, auto_map, colliding key_map) answered
422 naming the field, with nothing written to the artifact store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from operators import evaluate, load_checkpoint, load_dataset
from operators.models.sources import build
from tests.conftest import Stack
from tests.e2e.test_jobs_end_to_end import wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("timm")
pytest.importorskip("transformers")

RESNET = ("timm:resnet18", {"num_classes": 10, "in_chans": 1, "channels": [8, 8, 16, 16],
                            "stem_width": 8})  # fmt: skip
VIT = ("hf:image-classification", {
    "model_type": "vit", "image_size": 8, "patch_size": 2, "num_hidden_layers": 2,
    "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 10,
    "num_channels": 1,
})  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, httpx.Client]]:
    """One embedded server for the module's tests (starting one costs seconds)."""
    stack = Stack(tmp_path_factory.mktemp("sources"))
    stack.serve()
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield stack, client
    stack.close()


def _weights(path: Path, architecture: str, config: dict) -> Path:
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build(architecture, config).state_dict().items()},
              str(path))  # fmt: skip
    return path


def _register(client: httpx.Client, weights: Path, architecture: str, config: dict,
              **fields: str) -> httpx.Response:  # fmt: skip
    with open(weights, "rb") as fh:
        return client.post(
            "/v1/models",
            data={"architecture": architecture, "config": json.dumps(config), **fields},
            files={"weights": (weights.name, fh, "application/octet-stream")},
        )


def _job(model_id: int) -> dict:
    return {
        "model_id": model_id,
        "dataset": "builtin:digits",
        "objective": {"maximize": "compression_ratio",
                      "constraints": [{"metric": "accuracy_drop", "max": 1.0}]},  # fmt: skip
        "search_space": {"strategies": [{"name": "prune+cluster+fp16", "steps": [
            {"op": "prune", "sparsity": {"min": 0.3, "max": 0.8}},
            {"op": "cluster", "bits": 4},
            {"op": "quantize", "dtype": "float16"},
        ]}]},  # fmt: skip
        "finetune": {"method": "masked", "epochs": 1, "batch_size": 128},
        "budget": {"max_trials": 2, "max_parallel": 1},
        "seed": 1,
    }


@pytest.mark.parametrize("model", [RESNET, VIT], ids=["timm-resnet18", "hf-vit"])
def test_timm_and_hf_models_register_compress_and_reload_over_http(server, tmp_path, model):
    stack, client = server
    architecture, config = model
    reply = _register(client, _weights(tmp_path / "w.safetensors", *model), *model)
    assert reply.status_code == 201, reply.text
    registered = reply.json()
    assert registered["architecture"] == architecture and registered["config"] == config
    assert registered["source"] == architecture.split(":")[0]
    assert registered["input_shape"][0] == 1 and registered["input_dtype"] == "float32"
    accepted = client.post("/v1/jobs", json=_job(registered["id"]))
    assert accepted.status_code == 202, accepted.text
    job = wait_for(client, accepted.json()["id"], timeout=240, procs=stack.procs)
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert job["state"] == "succeeded", (job, trials)
    assert [t["state"] for t in trials] == ["succeeded", "succeeded"], trials
    best = job["best"]
    path = tmp_path / "best.safetensors"
    path.write_bytes(client.get(f"/v1/trials/{best['id']}/checkpoint").content)
    packed, manifest = load_checkpoint(path)
    assert (manifest["architecture"], manifest["config"]) == (architecture, config)
    accuracy = evaluate(packed, load_dataset("builtin:digits"))["accuracy"]
    assert accuracy == pytest.approx(best["metrics"]["accuracy"], abs=1e-6)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize(
    ("architecture", "config", "fields", "field", "words"),
    [
        ("mlp", {"in_features": 64, "hidden": [100000, 100000]}, {}, "config",
         "more than the limit"),
        ("timm:no_such_net", {}, {}, "architecture", "unknown timm model"),
        (VIT[0], {**VIT[1], "auto_map": {"AutoModel": "evil.Model"}}, {}, "config.auto_map",
         "custom model code"),
        ("mlp", {"in_features": 64, "hidden": [16]},
         {"key_map": json.dumps({"1.weight": "fc1.weight", "3.weight": "fc1.weight"})},
         "key_map", "maps both"),
        ("mlp", {"in_features": 64, "hidden": [16]}, {}, "weights", '"prefix": {"1.": "fc1."'),
    ],
    ids=["over-param-cap", "unknown-timm-name", "hf-auto-map", "key-map-collision",
         "sequential-keys"],
)
def test_hostile_registrations_are_422_naming_the_field_and_store_nothing(
    server, tmp_path, architecture, config, fields, field, words
):
    stack, client = server
    user = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10))  # fmt: skip
    weights = tmp_path / "user.safetensors"
    save_file(user.state_dict(), str(weights))
    before = _files(stack.tmp / "artifacts")
    reply = _register(client, weights, architecture, config, **fields)
    assert reply.status_code == 422, reply.text
    error = reply.json()
    assert error["errors"][0]["field"] == field and words in error["detail"], error
    assert _files(stack.tmp / "artifacts") == before


def test_the_openapi_schema_describes_the_model_source_fields(server):
    _, client = server
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][ref]["properties"]
    for name in ("architecture", "config", "input_shape", "input_dtype", "key_map"):
        assert fields[name].get("description"), name
    assert "timm:" in fields["architecture"]["description"]


def test_a_sequential_mlp_is_accepted_with_a_key_map(server, tmp_path):
    _, client = server
    user = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10))  # fmt: skip
    weights = tmp_path / "user.safetensors"
    save_file(user.state_dict(), str(weights))
    reply = _register(client, weights, "mlp", {"in_features": 64, "hidden": [16]},
                      key_map=json.dumps({"prefix": {"1.": "fc1.", "3.": "fc2."}}))  # fmt: skip
    assert reply.status_code == 201, reply.text
    assert reply.json()["input_shape"] == [64]
