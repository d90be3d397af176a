"""ONNX and .pt2 exports of packed checkpoints compute what the packed model computes."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.export import (
    ONNX_OPSET,
    MissingExtra,
    export_checkpoint,
    export_onnx,
    load_deployable,
)
from operators.export.formats import LAST_ONNX_EXPORTER
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.models.zoo import build_model

try:
    import onnx
    import onnxruntime as ort
except ImportError:  # the models extra is not installed: the .pt2 tests still run
    onnx = ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="needs the models extra (onnx, onnxruntime)")

MLP = ("mlp", {"in_features": 32, "hidden": [24, 16], "num_classes": 10}, [32])
LENET5 = ("lenet-5", {"image_size": 16}, [1, 16, 16])
# (id, model, strategy, tolerance): float32 weights 1e-4, float16 weights 1e-2; lenet5-int8
# has int8 Conv2d and Linear layers
CASES = [
    ("mlp-prune-fp16", MLP, [{"op": "prune", "sparsity": 0.8}, {"op": "quantize", "dtype": "float16"}], 1e-2),
    ("lenet5-filter_prune", LENET5, [{"op": "filter_prune", "ratio": 0.5}], 1e-4),
    ("lenet5-int8", LENET5, [{"op": "quantize", "dtype": "int8"}], 1e-4),
    ("mlp-cluster", MLP, [{"op": "cluster", "bits": 3}], 1e-4),
    ("mlp-cluster-bias", MLP, [{"op": "cluster", "bits": 3, "bias_bits": 3}], 1e-4),
    ("mlp-mpd", MLP, [{"op": "mpd", "blocks": 4}], 1e-4),
    ("lenet5-lowrank", LENET5, [{"op": "lowrank", "rank": 4, "include": "fc1|conv2"}], 1e-4),
]  # fmt: skip


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def packed(request, tmp_path_factory):
    """(checkpoint path, input batch, packed model's outputs, tolerance, case id)."""
    name, (architecture, config, shape), steps, tol = request.param
    torch.manual_seed(0)
    cm = apply_strategy(build_model(architecture, config), steps)
    path = tmp_path_factory.mktemp(name) / "packed.safetensors"
    save_checkpoint(cm, path, architecture=architecture, config=config)
    model, _ = load_checkpoint(path, runtime="packed")
    x = torch.randn(5, *shape)
    with torch.no_grad():
        expected = model(x).numpy()
    return path, x, expected, tol, name


def _onnx_weights(model) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


@needs_onnx
def test_onnx_export_runs_in_onnxruntime_like_the_packed_model(packed):
    path, x, expected, tol, name = packed
    out = path.with_suffix(".onnx")
    assert export_checkpoint(path, "onnx", out) == out.stat().st_size
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert ONNX_OPSET >= 17
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - expected).max() <= tol
    (one,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})  # dynamic batch
    assert np.abs(one - expected[:1]).max() <= tol
    assert LAST_ONNX_EXPORTER["name"] == "dynamo"
    ops = [n.op_type for n in model.graph.node]
    weights = _onnx_weights(model)
    if "int8" in name:
        int8 = {n for n, a in weights.items() if a.dtype == np.int8}
        dequant = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert dequant and {n.input[0] for n in dequant} <= int8 and int8
        assert all(a.dtype != np.float32 or a.size < 1000 for a in weights.values())
    if name == "lenet5-filter_prune":  # removed filters stay removed: the convs are smaller
        conv_out = sorted(a.shape[0] for a in weights.values() if a.ndim == 4)
        assert conv_out[0] < 6 and conv_out[-1] < 16
    if name == "lenet5-lowrank":  # two layers each: 2 convs + 1 factored (2), 3 fcs + 1
        assert ops.count("Conv") == 3 and ops.count("Gemm") + ops.count("MatMul") == 4


def test_pt2_export_loads_with_torch_export_like_the_packed_model(packed):
    path, x, expected, tol, name = packed
    out = path.with_suffix(".pt2")
    assert export_checkpoint(path, "pt2", out) == out.stat().st_size
    program = torch.export.load(str(out))
    with torch.no_grad():
        got = program.module()(x).numpy()
    assert np.abs(got - expected).max() <= tol
    if "int8" in name:  # int8 buffers, dequantised by plain ATen ops (no extra op library)
        assert any(t.dtype == torch.int8 for t in program.state_dict.values())
        assert "quantized_decomposed" not in str(program.graph)


@needs_onnx
def test_torchscript_onnx_exporter_keeps_int8_initializers(tmp_path):
    architecture, config, shape = MLP
    torch.manual_seed(0)
    cm = apply_strategy(build_model(architecture, config), [{"op": "quantize", "dtype": "int8"}])
    path = tmp_path / "int8.safetensors"
    save_checkpoint(cm, path, architecture=architecture, config=config)
    model, _ = load_deployable(path)
    out = tmp_path / "int8.onnx"
    export_onnx(model, shape, "float32", out, exporter="torchscript")
    assert LAST_ONNX_EXPORTER["name"] == "torchscript"
    weights = _onnx_weights(onnx.load(str(out)))
    assert sum(a.dtype == np.int8 for a in weights.values()) == 3
    x = torch.randn(4, *shape)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4


def test_export_refuses_an_unknown_format(packed):
    path = packed[0]
    with pytest.raises(ValueError, match="format: must be one of onnx, pt2"):
        export_checkpoint(path, "tflite", path.with_suffix(".tflite"))


def test_onnx_export_without_the_models_extra_names_it(packed, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    path = packed[0]
    with pytest.raises(MissingExtra, match=r"needs onnxscript: pip install autocompress\[models\]"):
        export_checkpoint(path, "onnx", path.with_suffix(".missing.onnx"))
