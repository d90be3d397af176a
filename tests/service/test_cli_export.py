"""`autocompress export CHECKPOINT --format onnx|pt2 --output FILE`, run here (the ONNX writer
itself is tested in tests/operators/export/)."""

import json

import pytest
import torch

from operators import apply_strategy, build_model, load_checkpoint, save_checkpoint
from service.cli import main

CONFIG = {"in_features": 16, "hidden": [12], "num_classes": 4}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    cm = apply_strategy(build_model("mlp", CONFIG), [{"op": "quantize", "dtype": "int8"}])
    path = tmp_path / "packed.safetensors"
    save_checkpoint(cm, path, architecture="mlp", config=CONFIG)
    return path


def test_cli_export_writes_a_pt2_that_computes_like_the_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", str(checkpoint), "--format", "pt2", "--output", str(out)]) == 0
    reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reply == {"checkpoint": str(checkpoint), "format": "pt2", "path": str(out),
                     "size_bytes": out.stat().st_size}  # fmt: skip
    packed, _ = load_checkpoint(checkpoint, runtime="packed")
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), packed(x))


def test_cli_export_of_a_missing_or_invalid_file_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.safetensors"), "--format", "pt2"]) == 1
    assert "no checkpoint file" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    assert main(["export", str(bad), "--format", "pt2", "--output", str(tmp_path / "x.pt2")]) == 1
    assert "not a valid autocompress checkpoint" in capsys.readouterr().err
