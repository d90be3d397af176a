"""``head_prune`` is refused at ``POST /v1/jobs`` (a 422 on the step's ``op`` giving the reason)
for a model without attention heads it recognises, and accepted for one that has them."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save

from operators.models.sources import build
from tests.operators.ops.heads.test_heads import VIT
from tests.service.api.test_api_validation import client, job, register  # noqa: F401 (fixture)

pytest.importorskip("timm")
pytest.importorskip("transformers")

RESNET = ("timm:resnet18", {"num_classes": 10, "in_chans": 1, "channels": [8, 8, 16, 16], "stem_width": 8})
HEADS = {"strategies": [{"name": "h", "steps": [
    {"op": "quantize", "dtype": "float16"},
    {"op": "head_prune", "ratio": {"min": 0.25, "max": 0.5}},
]}]}  # fmt: skip


def register_source(client: TestClient, architecture: str, config: dict) -> int:  # noqa: F811
    weights = save({k: v.contiguous() for k, v in build(architecture, config).state_dict().items()})
    reply = client.post("/v1/models", data={"architecture": architecture, "config": json.dumps(config)},
                        files={"weights": ("w.safetensors", io.BytesIO(weights))})  # fmt: skip
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


def test_head_prune_on_models_without_attention_heads_is_a_422_naming_the_op(client: TestClient) -> None:  # noqa: F811
    models = {"mlp": register(client).json()["id"], RESNET[0]: register_source(client, *RESNET)}
    for architecture, model_id in models.items():
        reply = client.post("/v1/jobs", json=job(model_id, search_space=HEADS))
        assert reply.status_code == 422, reply.text
        [error] = reply.json()["errors"]
        assert error["field"] == "body.search_space.strategies[0].steps[1].op"
        assert f"head_prune cannot run on {architecture}" in error["message"]
        assert "no attention module" in error["message"]
    assert client.get("/v1/jobs").json() == []


def test_head_prune_on_a_vit_is_accepted(client: TestClient) -> None:  # noqa: F811
    model_id = register_source(client, *VIT)
    reply = client.post("/v1/jobs", json=job(model_id, search_space=HEADS))
    assert reply.status_code == 202, reply.text
