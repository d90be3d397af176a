"""Model sources over real HTTP (embedded server, SQLite, in-process workers): a timm ResNet and
MobileNetV3, a torchvision ResNet-18 and Hugging Face ViT and BERT classifiers registered with
weights saved by the test, a two-trial job each (on builtin:digits, or on an uploaded .npz:
digits as three channels for torchvision, random token ids for BERT), their checkpoints
downloaded and reloaded through the source, and their ONNX and .pt2 exports run and compared
with the reloaded model; and hostile registrations (over the parameter cap, unknown timm name,
auto_map, colliding key_map) answered 422 naming the field, with nothing written to the
artifact store."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from operators import evaluate, load_checkpoint, load_dataset
from operators.data.datasets import Dataset
from operators.models.sources import build
from tests.conftest import Stack
from tests.e2e.test_jobs_end_to_end import wait_for
from tests.operators.ops.heads.test_heads import BERT, VIT  # 4 heads each, of 8 dims
from tests.service.api.test_dataset_uploads import npz_bytes

pytestmark = pytest.mark.e2e
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

RESNET = ("timm:resnet18", {"num_classes": 10, "in_chans": 1, "channels": [8, 8, 16, 16],
                            "stem_width": 8})  # fmt: skip
SEQUENCE = 8  # BERT's token ids per sample

PRUNE_CLUSTER = {"name": "prune+cluster+fp16", "steps": [
    {"op": "prune", "sparsity": {"min": 0.3, "max": 0.8}},
    {"op": "cluster", "bits": 4},
    {"op": "quantize", "dtype": "float16"},
]}  # fmt: skip
FILTERS = {"name": "filters+fp16", "steps": [
    {"op": "filter_prune", "ratio": {"min": 0.1, "max": 0.4}},
    {"op": "quantize", "dtype": "float16"},
]}  # fmt: skip
HEADS = {"name": "heads+neurons", "steps": [
    {"op": "head_prune", "ratio": {"min": 0.25, "max": 0.5}},
    {"op": "neuron_prune", "ratio": {"min": 0.1, "max": 0.5}},
]}  # fmt: skip


def _digits() -> dict[str, np.ndarray]:
    data = load_dataset("builtin:digits")
    return {name: getattr(data, name).numpy() for name in ("x_train", "y_train", "x_val", "y_val")}


def _digits_rgb() -> dict[str, np.ndarray]:
    """A quarter of digits as three-channel images (torchvision's ResNet stem takes three)."""
    arrays = _digits()
    return {name: (np.repeat(a[::4], 3, axis=1) if name[0] == "x" else a[::4])
            for name, a in arrays.items()}  # fmt: skip


def _token_ids() -> dict[str, np.ndarray]:
    """Random token ids (as the .npz's float32 x), labelled by the first token mod 3."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 256), ("val", 64)):
        x = rng.integers(0, BERT[1]["vocab_size"], (n, SEQUENCE))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.astype(np.float32), x[:, 0] % 3
    return arrays


@dataclass(frozen=True)
class Case:
    """One source's trip: the model, registration fields, data, searched strategy and the
    export tolerance (1e-4 for float32 weights, 1e-2 for float16)."""

    architecture: str
    config: dict
    strategy: dict
    tolerance: float
    data: Callable[[], dict[str, np.ndarray]] | None = None  # None: builtin:digits
    fields: tuple[tuple[str, str], ...] = ()
    input_dtype: str = "float32"


CASES = {
    "timm-resnet18": Case(*RESNET, PRUNE_CLUSTER, 1e-2),
    # filter_prune resizes timm's BatchNormAct2d: recorded as a "resized" module
    "timm-mobilenetv3": Case("timm:mobilenetv3_small_100", {"num_classes": 10, "in_chans": 1},
                             FILTERS, 1e-2),
    "torchvision-resnet18": Case("torchvision:resnet18", {"num_classes": 10}, FILTERS, 1e-2,
                                 _digits_rgb),
    "hf-vit": Case(*VIT, HEADS, 1e-4),
    "hf-bert": Case(*BERT, HEADS, 1e-4, _token_ids, (("input_dtype", "int64"),), "int64"),
}  # fmt: skip


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


def _dataset(client: httpx.Client, case: Case) -> tuple[str, Dataset]:
    """(the job's dataset reference, the same data here): builtin:digits or an .npz upload."""
    if case.data is None:
        return "builtin:digits", load_dataset("builtin:digits")
    arrays = case.data()
    reply = client.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(**arrays))})
    assert reply.status_code == 201, reply.text
    tensors = {k: torch.from_numpy(v).to(torch.int64 if k[0] == "y" else torch.float32)
               for k, v in arrays.items()}  # fmt: skip
    return reply.json()["ref"], Dataset(**tensors, num_classes=int(arrays["y_train"].max()) + 1)


def _job(model_id: int, dataset: str, strategy: dict) -> dict:
    return {
        "model_id": model_id,
        "dataset": dataset,
        "objective": {"maximize": "compression_ratio",
                      "constraints": [{"metric": "accuracy_drop", "max": 100.0}]},  # fmt: skip
        "search_space": {"strategies": [strategy]},
        "finetune": {"method": "masked", "epochs": 1, "batch_size": 128},
        "budget": {"max_trials": 2, "max_parallel": 1},
        "seed": 1,
    }


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_each_source_registers_compresses_reloads_and_exports_over_http(server, tmp_path, case):
    stack, client = server
    architecture, config = case.architecture, case.config
    dataset, data = _dataset(client, case)
    shape = list(data.input_shape)  # the sources' defaults are 224x224 (timm, torchvision)
    reply = _register(client, _weights(tmp_path / "w.safetensors", architecture, config),
                      architecture, config, input_shape=json.dumps(shape),
                      **dict(case.fields))  # fmt: skip
    assert reply.status_code == 201, reply.text
    registered = reply.json()
    assert registered["architecture"] == architecture and registered["config"] == config
    assert registered["source"] == architecture.split(":")[0]
    assert (registered["input_shape"], registered["input_dtype"]) == (shape, case.input_dtype)
    accepted = client.post("/v1/jobs", json=_job(registered["id"], dataset, case.strategy))
    assert accepted.status_code == 202, accepted.text
    job = wait_for(client, accepted.json()["id"], timeout=240, procs=stack.procs)
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert job["state"] == "succeeded", (job, [t["error"] for t in trials])
    assert [t["state"] for t in trials] == ["succeeded", "succeeded"], trials
    best = job["best"]
    path = tmp_path / "best.safetensors"
    path.write_bytes(client.get(f"/v1/trials/{best['id']}/checkpoint").content)
    packed, manifest = load_checkpoint(path)
    assert (manifest["architecture"], manifest["config"]) == (architecture, config)
    accuracy = evaluate(packed, data)["accuracy"]
    assert accuracy == pytest.approx(best["metrics"]["accuracy"], abs=1e-6)
    x = data.x_val[:5]
    with torch.no_grad():
        expected = packed(x).numpy()
    for fmt in ("onnx", "pt2"):
        exported = client.get(f"/v1/trials/{best['id']}/export", params={"format": fmt})
        assert exported.status_code == 200, exported.text
        (tmp_path / f"m.{fmt}").write_bytes(exported.content)
    (onnx_out,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})
    assert abs(onnx_out - expected).max() <= case.tolerance
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert abs(program(x).detach().numpy() - expected).max() <= case.tolerance
    if case.strategy is HEADS:  # whole heads went: the query projections are narrower
        queries = {n: m["args"]["out_features"] for n, m in manifest["modules"].items()
                   if n.endswith(("q_proj", "query"))}  # fmt: skip
        assert queries and all(width < config["hidden_size"] for width in queries.values())


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
