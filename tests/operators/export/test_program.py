"""read_program: a .pt2 loads from its JSON graph and raw weights; pickles never run."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from operators.export.program import read_program


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.register_buffer("shift", torch.arange(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + self.shift


class WritesMarker:
    """Unpickling this creates the marker file (what a hostile pickle would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def archive(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = Small().eval()
    program = torch.export.export(
        model, (torch.randn(3, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = tmp_path / "small.pt2"
    torch.export.save(program, str(path))
    return path, model


def rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the zip ``source`` with the entries ending in ``change``'s keys replaced
    (``None``: dropped); keys not present are added under the archive's root."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        done = set()
        for info in src.infolist():
            key = next((k for k in change if info.filename.endswith(k)), None)
            if key is None:
                dst.writestr(info, src.read(info))
            elif change[key] is not None:
                dst.writestr(info.filename, change[key])
            done.add(key)
        for key, data in change.items():
            if key not in done and data is not None:
                dst.writestr(f"{root}/{key}", data)
    return target


def test_read_program_gives_the_outputs_of_the_saved_module(archive):
    path, model = archive
    module, state = read_program(path)
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), rtol=0, atol=0)
    assert set(state) == {"fc.weight", "fc.bias", "shift"}


def test_read_program_refuses_hostile_sample_inputs_without_unpickling_them(archive, tmp_path):
    path, _ = archive
    marker = tmp_path / "marker"
    bare = rewrite(path, tmp_path / "bare.pt2",
                   {"data/sample_inputs/model.pt": pickle.dumps(WritesMarker(marker))})  # fmt: skip
    with pytest.raises(ValueError, match=r"small/data/sample_inputs/model.pt: not a torch.save archive"):
        read_program(bare)
    inside = tmp_path / "inside.pt"  # a torch.save zip whose data.pkl would call open()
    torch.save({"x": torch.zeros(2)}, inside)
    with zipfile.ZipFile(inside) as z, zipfile.ZipFile(tmp_path / "evil.pt", "w") as out:
        for info in z.infolist():
            data = pickle.dumps(WritesMarker(marker), protocol=2) if info.filename.endswith("data.pkl") else z.read(info)
            out.writestr(info.filename, data)
    evil = rewrite(path, tmp_path / "evil.pt2",
                   {"data/sample_inputs/model.pt": (tmp_path / "evil.pt").read_bytes()})  # fmt: skip
    with pytest.raises(ValueError, match=r"sample_inputs/model.pt: the pickle names 'io.open'"):
        read_program(evil)
    assert not marker.exists()


def test_read_program_refuses_a_pickled_weight(archive, tmp_path):
    path, _ = archive
    marker = tmp_path / "marker"
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    config["config"]["fc.weight"]["use_pickle"] = True
    hostile = rewrite(path, tmp_path / "hostile.pt2", {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        "data/weights/weight_0": pickle.dumps(WritesMarker(marker)),
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"data/weights/weight_0: 'fc.weight' is pickled"):
        read_program(hostile)
    assert not marker.exists()


def test_read_program_refuses_an_entry_over_the_size_limit(archive):
    path, _ = archive
    with pytest.raises(ValueError, match=r"small/data/weights/weight_0: 96 bytes, more than the limit of 64"):
        read_program(path, max_entry_bytes=64)


def test_read_program_refuses_a_truncated_weight_entry(archive, tmp_path):
    path, _ = archive
    with zipfile.ZipFile(path) as z:
        short = z.read("small/data/weights/weight_0")[:40]
    cut = rewrite(path, tmp_path / "cut.pt2", {"data/weights/weight_0": short})
    with pytest.raises(ValueError, match=r"data/weights/weight_0: 40 bytes, but 'fc.weight'"):
        read_program(cut)


def test_read_program_refuses_a_truncated_archive(archive, tmp_path):
    path, _ = archive
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a complete zip archive"):
        read_program(cut)


def test_read_program_refuses_native_code_and_unknown_entries(archive, tmp_path):
    path, _ = archive
    native = rewrite(path, tmp_path / "native.pt2", {"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(ValueError, match=r"model\.so: native code"):
        read_program(native)
    odd = rewrite(path, tmp_path / "odd.pt2", {"payload.bin": b"x"})
    with pytest.raises(ValueError, match=r"small/payload\.bin: not an entry of a torch.export archive"):
        read_program(odd)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("torch.ops.aten.linear.default", "torch.load", "node target 'torch.load'"),
        ("Symbol('s", "__import__('os').getcwd() + Symbol('s", "name '__import__' not allowed"),
    ],
    ids=["target", "shape-expression"],
)
def test_read_program_refuses_a_graph_that_calls_outside_aten(archive, tmp_path, old, new, message):
    path, _ = archive
    with zipfile.ZipFile(path) as z:
        text = z.read("small/models/model.json").decode()
    assert old in text
    hostile = rewrite(path, tmp_path / "hostile.pt2",
                      {"models/model.json": text.replace(old, new, 1).encode()})  # fmt: skip
    with pytest.raises(ValueError, match=r"small/models/model\.json: .*" + message.replace("(", r"\(")):
        read_program(hostile)


def test_export_source_builds_the_program_inside_an_allowed_root_only(archive, tmp_path):
    from operators.export.source import ROOTS, allow_root
    from operators.models.sources import SourceError, build, model_info

    path, model = archive
    saved = list(ROOTS)
    try:
        ROOTS.clear()
        with pytest.raises(SourceError, match="not inside an allowed root"):
            build(f"export:{path}", {})
        allow_root(tmp_path)
        built = build(f"export:{path}", {})
        x = torch.randn(4, 6)
        with torch.no_grad():
            torch.testing.assert_close(built(x), model(x))
        info = model_info(f"export:{path}", {})
        assert (info.input_shape, info.input_dtype, info.params) == ([6], "float32", 28)
        with pytest.raises(SourceError, match="must be {}"):
            build(f"export:{path}", {"width": 2})
    finally:
        ROOTS[:] = saved
