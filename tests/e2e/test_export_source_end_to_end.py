"""The export: source over real HTTP (embedded server, SQLite, in-process workers): a user's own
nn.Module saved with torch.export.save is registered as a `program` file, a two-trial job on
builtin:digits compresses it, and the downloaded checkpoint reloads (with the archive gone from
the server) and exports to ONNX (onnxruntime) and .pt2 (torch.export.load) with the same
outputs; hostile archives (a sample-input pickle that would run code, a truncated entry, an
oversized entry, a refused op) are 4xx answers naming the problem, and nothing is stored."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from operators import evaluate, load_checkpoint, load_dataset
from operators.export import export_checkpoint
from tests.conftest import Stack
from tests.e2e.test_jobs_end_to_end import wait_for
from tests.operators.export.test_program import WritesMarker, rewrite

pytestmark = pytest.mark.e2e
UPLOAD_LIMIT = 1 << 20


class UserNet(nn.Module):
    """The user's own model: a conv, a non-persistent buffer and a lifted constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x * self.scale - torch.tensor(1.0))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, httpx.Client]]:
    """One embedded server, uploads limited to 1 MiB (so an oversized entry is cheap to make)."""
    stack = Stack(tmp_path_factory.mktemp("export"))
    stack.env["AUTOCOMPRESS_MAX_UPLOAD_BYTES"] = str(UPLOAD_LIMIT)
    stack.serve()
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield stack, client
    stack.close()


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The user's model (trained a little on digits, so a job has accuracy to keep) and its
    torch.export.save archive with a dynamic batch dimension."""
    torch.manual_seed(0)
    model = UserNet()
    data = load_dataset("builtin:digits")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, len(data.x_train), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[i : i + 64]), data.y_train[i : i + 64])
            loss.backward()
            optimizer.step()
    model.eval()
    exported = torch.export.export(model, (data.x_val[:2],),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    path = tmp_path_factory.mktemp("user") / "usernet.pt2"
    torch.export.save(exported, str(path))
    return model, path


def _digits_job(model_id: int, steps: list[dict]) -> dict:
    """A two-trial job of one strategy on builtin:digits."""
    return {"model_id": model_id, "dataset": "builtin:digits", "seed": 1,
            "search_space": {"strategies": [{"name": "exported", "steps": steps}]},
            "objective": {"maximize": "compression_ratio",
                          "constraints": [{"metric": "accuracy_drop", "max": 1.0}]},
            "budget": {"max_trials": 2, "max_parallel": 1},
            "finetune": {"method": "masked", "epochs": 1, "batch_size": 128}}  # fmt: skip


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _register(client: httpx.Client, archive: Path, architecture: str = "export:") -> httpx.Response:
    with open(archive, "rb") as fh:
        return client.post("/v1/models", data={"architecture": architecture},
                           files={"program": (archive.name, fh, "application/octet-stream")})  # fmt: skip


def test_an_exported_program_registers_compresses_reloads_and_exports(server, program, tmp_path):
    stack, client = server
    model, archive = program
    reply = _register(client, archive)
    assert reply.status_code == 201, reply.text
    registered = reply.json()
    assert registered["source"] == "export" and registered["architecture"].startswith("export:program/")
    assert registered["input_shape"] == [1, 8, 8] and registered["config"] == {}
    assert registered["params"] == sum(p.numel() for p in model.parameters())
    job = _digits_job(registered["id"], [{"op": "prune", "sparsity": {"min": 0.3, "max": 0.8}},
                                          {"op": "cluster", "bits": 5}])  # fmt: skip
    accepted = client.post("/v1/jobs", json=job)
    assert accepted.status_code == 202, accepted.text
    done = wait_for(client, accepted.json()["id"], timeout=240, procs=stack.procs)
    trials = client.get(f"/v1/jobs/{done['id']}/trials").json()
    assert done["state"] == "succeeded", (done, trials)
    assert [t["state"] for t in trials] == ["succeeded", "succeeded"], trials
    best = done["best"]
    checkpoint = tmp_path / "best.safetensors"
    checkpoint.write_bytes(client.get(f"/v1/trials/{best['id']}/checkpoint").content)
    for stored in (stack.tmp / "artifacts" / "program").glob("*.pt2"):
        stored.unlink()  # the checkpoint records the program: the server's copy is not needed
    packed, manifest = load_checkpoint(checkpoint)
    assert manifest["architecture"] == registered["architecture"]
    assert set(manifest["config"]) == {"program", "tensors", "constants"}
    digits = load_dataset("builtin:digits")
    assert evaluate(packed, digits)["accuracy"] == pytest.approx(best["metrics"]["accuracy"], abs=1e-6)
    x = digits.x_val[:16]
    with torch.no_grad():
        expected = packed(x).numpy()
    pt2 = tmp_path / "best.pt2"
    export_checkpoint(checkpoint, "pt2", pt2)
    with torch.no_grad():
        assert np.abs(torch.export.load(str(pt2)).module()(x).numpy() - expected).max() <= 1e-4
    ort = pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "best.onnx"
    export_checkpoint(checkpoint, "onnx", onnx_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - expected).max() <= 1e-4


def _zeros_entry(source: Path, target: Path, size: int) -> Path:
    """A copy of ``source`` whose first weight entry declares ``size`` bytes (deflated zeros)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("data/weights/weight_0"):
                dst.writestr(info.filename, bytes(size), compress_type=zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(info, src.read(info))
    return target


def test_hostile_archives_are_4xx_naming_the_problem_and_store_nothing(server, program, tmp_path):
    stack, client = server
    _, archive = program
    marker = tmp_path / "marker"
    with zipfile.ZipFile(archive) as z:
        weight = z.read("usernet/data/weights/weight_0")
    cases = [
        (rewrite(archive, tmp_path / "pickle.pt2",
                 {"data/sample_inputs/model.pt": pickle.dumps(WritesMarker(marker))}),  # fmt: skip
         422, "usernet/data/sample_inputs/model.pt: not a torch.save archive"),
        (rewrite(archive, tmp_path / "cut.pt2", {"data/weights/weight_0": weight[:100]}),
         422, "usernet/data/weights/weight_0: 100 bytes, but 'conv.weight'"),
        (_zeros_entry(archive, tmp_path / "big.pt2", 2 * UPLOAD_LIMIT),
         422, f"usernet/data/weights/weight_0: {2 * UPLOAD_LIMIT} bytes, more than the limit"),
        (tmp_path / "half.pt2", 422, "half.pt2: not a complete zip archive"),
        (tmp_path / "huge.pt2", 413, "larger than the limit"),
    ]
    (tmp_path / "half.pt2").write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (tmp_path / "huge.pt2").write_bytes(bytes(UPLOAD_LIMIT + 1))
    before = _files(stack.tmp / "artifacts")
    models = client.get("/v1/models").json()
    for path, status, words in cases:
        reply = _register(client, path)
        assert reply.status_code == status, (path.name, reply.text)
        error = reply.json()
        assert error["errors"][0]["field"] == "program" and words in error["detail"], error
        assert str(stack.tmp) not in error["detail"]  # no server path in the answer
    assert _files(stack.tmp / "artifacts") == before
    assert client.get("/v1/models").json() == models
    assert not marker.exists()


def test_misuse_of_the_export_source_is_422(server, program):
    _, client = server
    _, archive = program
    reply = client.post("/v1/models", data={"architecture": "export:"})
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "program"
    reply = _register(client, archive, "export:/etc/passwd")
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "architecture"
    reply = client.post("/v1/models", data={"architecture": "export:etc/x.pt2", "config": "{}"})
    assert reply.status_code == 422 and "program" in reply.json()["detail"]


def test_a_weights_file_replaces_the_archive_weights_and_must_fit_them(server, program, tmp_path):
    _, client = server
    model, archive = program
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    weights = tmp_path / "w.safetensors"
    save_file(state, str(weights))
    with open(archive, "rb") as fh, open(weights, "rb") as wh:
        reply = client.post("/v1/models", data={"architecture": "export"},
                            files={"program": ("a.pt2", fh), "weights": ("w.safetensors", wh)})  # fmt: skip
    assert reply.status_code == 201, reply.text
    save_file({"other.weight": torch.zeros(2)}, str(weights))
    with open(archive, "rb") as fh, open(weights, "rb") as wh:
        reply = client.post("/v1/models", data={"architecture": "export:"},
                            files={"program": ("a.pt2", fh), "weights": ("w.safetensors", wh)})  # fmt: skip
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "weights"
    detail = reply.json()["detail"]
    assert "conv.weight" in detail and "other.weight" in detail and "a.pt2" in detail
    assert str(server[0].tmp) not in detail  # the staged program's server path is not shown


def test_the_openapi_schema_describes_the_program_field(server):
    schemas = server[1].get("/openapi.json").json()["components"]["schemas"]
    form = next(v["properties"] for k, v in schemas.items() if k.startswith("Body_register_model"))
    assert "torch.export.save" in form["program"]["description"]
    assert "export:" in form["architecture"]["description"] and "export:" in form["weights"]["description"]


def test_channel_removal_on_an_exported_program_is_refused_naming_the_op(server, program):
    _, client = server
    registered = _register(client, program[1]).json()
    job = _digits_job(registered["id"], [{"op": "filter_prune", "ratio": 0.5}])
    reply = client.post("/v1/jobs", json=job)
    assert reply.status_code == 422, reply.text
    error = reply.json()
    assert error["errors"][0]["field"] == "body.search_space.strategies[0].steps[0].op"
    assert "filter_prune cannot run on export:" in error["detail"] and "torch-pruning" in error["detail"]
    default = client.post("/v1/jobs", json={**job, "search_space": None})
    assert default.status_code == 202, default.text  # the default space leaves channel removal out
    client.post(f"/v1/jobs/{default.json()['id']}/cancel")
