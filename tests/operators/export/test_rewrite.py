"""The export: source's FX rewrite: an exported MLP and CNN get real nn.Linear / nn.Conv2d layers
with the same outputs and state-dict keys, every parameter op compresses them, and their packed
checkpoints rebuild from the recorded program alone (the archive deleted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from operators import apply_strategy, load_checkpoint, save_checkpoint
from operators.export import source
from operators.export.rewrite import layer_paths, to_layers
from operators.format.checkpoint import read_manifest
from operators.models.sources import SourceError, build, model_info, portable_config, refused_ops


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 24), nn.Linear(24, 10)
        self.register_buffer("offset", torch.linspace(0, 1, 10), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + self.offset + torch.tensor(0.5)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.head(self.depthwise(x))


MODELS = {"mlp": (MLP, (32,), ["fc1", "fc2"]), "cnn": (CNN, (1, 6, 6), ["conv1", "conv2", "depthwise", "head.1"])}
STEPS = [
    {"op": "prune", "sparsity": 0.6},
    {"op": "block_prune", "sparsity": 0.5, "block": [2, 2]},
    {"op": "nm_prune", "n": 2, "m": 4},
    {"op": "cluster", "bits": 3, "method": "kmeans"},
    {"op": "unify", "block": [2, 2], "unify_ratio": 0.5, "prune_ratio": 0.2},
    {"op": "quantize", "dtype": "float16"},
    {"op": "quantize", "dtype": "int8"},
    {"op": "lowrank", "rank": 2},
    {"op": "mpd", "blocks": 2},
]


def _program(kind: str, decompose: bool = False) -> tuple[nn.Module, torch.export.ExportedProgram]:
    cls, shape, _ = MODELS[kind]
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nonzero, distinct biases and BN parameters
    program = torch.export.export(model, (torch.randn(2, *shape),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    return model, program.run_decompositions() if decompose else program


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, tuple[nn.Module, Path]]:
    root = tmp_path_factory.mktemp("programs")
    out = {}
    for kind in MODELS:
        model, program = _program(kind)
        torch.export.save(program, str(root / f"{kind}.pt2"))
        out[kind] = (model, root / f"{kind}.pt2")
    return out


@pytest.fixture
def allowed(archives, monkeypatch):
    root = next(iter(archives.values()))[1].parent
    monkeypatch.setattr(source, "ROOTS", [root.resolve()])
    return root


@pytest.mark.parametrize("kind", MODELS)
def test_rewrite_gives_real_layers_with_the_same_outputs_and_keys(kind):
    model, program = _program(kind)
    plain = program.module()
    rewritten = to_layers(program.module())
    assert layer_paths(rewritten) == MODELS[kind][2]
    assert not any(isinstance(m, nn.Linear | nn.Conv2d) for m in plain.modules())
    assert list(rewritten.state_dict()) == list(model.state_dict())
    x = torch.randn(5, *MODELS[kind][1])
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=0, atol=0)
    assert "aten.linear" not in rewritten.code and "aten.conv2d" not in rewritten.code
    rewritten.train()  # ExportedProgram.module() refuses train(); the rewrite gives it back
    assert rewritten.training and not rewritten.eval().training


def test_rewrite_handles_the_decomposed_convolution():
    model, program = _program("cnn", decompose=True)
    assert "aten.convolution.default" in str(program.graph)
    rewritten = to_layers(program.module())
    assert {"conv1", "conv2", "depthwise"} <= set(layer_paths(rewritten))
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("step", STEPS, ids=[f"{s['op']}-{s.get('dtype', '')}" for s in STEPS])
def test_every_parameter_op_compresses_an_exported_program_and_its_checkpoint_reloads(
    allowed, archives, tmp_path, kind, step
):
    original, path = archives[kind]
    architecture = f"export:{path.name}"
    model = build(architecture, {})
    assert all(p.requires_grad for p in model.parameters())  # fine-tuning trains them
    cm = apply_strategy(model, [step])
    changed = [n for n, p in cm.model.named_parameters() if "weight" in n]
    assert changed, cm.report
    x = torch.randn(4, *MODELS[kind][1])
    with torch.no_grad():
        expected = cm.model(x)
        assert not torch.equal(expected, original(x)) or step["op"] == "quantize"
    checkpoint = tmp_path / "packed.safetensors"
    save_checkpoint(cm, checkpoint, architecture=architecture, config={})
    manifest = read_manifest(checkpoint)
    assert manifest["architecture"] == architecture and "program" in manifest["config"]
    source.ROOTS.clear()  # nothing on the server is needed any more: the graph is recorded
    reloaded, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected, rtol=1e-5, atol=1e-5)


def test_the_record_carries_constants_and_refuses_a_tampered_graph(allowed, archives):
    _, path = archives["mlp"]
    record = portable_config(f"export:{path.name}", {})
    assert set(record["constants"]) == {"offset", "lifted_tensor_0"}
    assert record["tensors"]["fc1.weight"] == {"dtype": "float32", "shape": [24, 32], "parameter": True}
    evil = {**record, "program": {**record["program"], "x": {"target": "builtins.exec"}}}
    with pytest.raises(SourceError, match="'builtins.exec' is not an ATen operator"):
        build("export:anything", evil)
    with pytest.raises(SourceError, match="offset"):
        build("export:anything", {**record, "constants": {"offset": {**record["constants"]["offset"], "data": "AAAA"}}})


def test_paths_outside_the_allowed_roots_are_refused(allowed, tmp_path):
    with pytest.raises(SourceError, match="not inside an allowed root"):
        build(f"export:{tmp_path / 'x.pt2'}", {})
    with pytest.raises(SourceError, match="no such file"):
        build("export:missing.pt2", {})
    with pytest.raises(SourceError, match="must be {}"):
        build("export:mlp.pt2", {"num_classes": 3})


def test_a_program_with_a_fixed_batch_size_is_refused(allowed, tmp_path, monkeypatch):
    program = torch.export.export(MLP().eval(), (torch.randn(2, 32),))
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    monkeypatch.setattr(source, "ROOTS", [allowed.resolve(), tmp_path.resolve()])
    with pytest.raises(SourceError, match="exported with a fixed batch size"):
        model_info("export:fixed.pt2", {})
    info = model_info("export:mlp.pt2", {})  # the same model with a dynamic batch dimension
    assert (info.input_shape, info.input_dtype, info.params) == ([32], "float32", 32 * 24 + 24 + 24 * 10 + 10)


def test_channel_and_head_removal_are_refused_for_exported_programs_with_the_reason():
    refused = refused_ops("export:any.pt2")
    assert set(refused) == {"neuron_prune", "filter_prune", "head_prune"}
    assert "torch-pruning" in refused["filter_prune"]
    assert "attention" in refused["head_prune"]
    assert refused_ops("mlp") == {}


class Affine(nn.Module):
    """A Linear written as a matmul: ``addmm(b, x, w.t())``, or ``mm(x, w.transpose(0, 1))``."""

    def __init__(self, n_in: int, n_out: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) * 0.3)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(x, self.weight.transpose(0, 1))
        return torch.addmm(self.bias, x, self.weight.t())


class MatmulMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = Affine(32, 24, bias=True), Affine(24, 10, bias=False)
        self.scale = nn.Parameter(torch.randn(10, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # scale: used twice, so not a Linear
        y = self.fc2(torch.relu(self.fc1(x)))
        return torch.mm(y, self.scale.t()) + self.scale.sum()


def test_addmm_and_mm_on_a_transposed_parameter_become_linear_layers_ops_find():
    torch.manual_seed(0)
    model = MatmulMLP().eval()
    program = torch.export.export(model, (torch.randn(2, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert {"aten.addmm.default", "aten.mm.default", "aten.t.default"} <= set(map(str, (
        n.target for n in program.graph.nodes if n.op == "call_function")))  # fmt: skip
    rewritten = to_layers(program.module())
    assert layer_paths(rewritten) == ["fc1", "fc2"]
    assert rewritten.fc2.bias is None and list(rewritten.state_dict()) == list(model.state_dict())
    assert "aten.addmm" not in rewritten.code and rewritten.code.count("aten.mm") == 1
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-6, atol=1e-6)
    cm = apply_strategy(rewritten, [{"op": "prune", "sparsity": 0.5}])
    assert (cm.model.fc1.weight == 0).float().mean() >= 0.4


def test_the_decomposed_linear_of_an_exported_mlp_is_lifted():
    model, program = _program("mlp", decompose=True)
    assert "aten.addmm.default" in str(program.graph)
    rewritten = to_layers(program.module())
    assert layer_paths(rewritten) == ["fc1", "fc2"]
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-6)
