"""``head_prune`` on tiny Hugging Face ViT and BERT configs: the lowest-norm heads go, the
result computes what the model with those heads' weights zeroed computes (the oracle), the
head counts are updated, checkpoints round-trip under every runtime, ONNX and .pt2 exports
agree, and bad parameters or models are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy, extend, validate_steps
from operators.export import export_onnx, export_pt2
from operators.format.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.models.sources import build
from operators.train.staged import plan_stages

pytest.importorskip("transformers")

VIT = ("hf:image-classification", {
    "model_type": "vit", "image_size": 8, "patch_size": 4, "num_hidden_layers": 2,
    "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48, "num_labels": 10,
    "num_channels": 1,
})  # fmt: skip
BERT = ("hf:sequence-classification", {
    "model_type": "bert", "vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 12,
    "num_labels": 3,
})  # fmt: skip
# (id, model, attention modules, (q, k, v, output projection) inside them, an input batch)
MODELS = {
    "vit": (VIT, [f"vit.layers.{i}.attention" for i in range(2)],
            ("q_proj", "k_proj", "v_proj", "o_proj"), lambda: torch.randn(3, 1, 8, 8)),
    "bert": (BERT, [f"bert.encoder.layer.{i}.attention.self" for i in range(2)],
             ("query", "key", "value", "../output.dense"),
             lambda: torch.randint(0, 40, (3, 10)).float()),
}  # fmt: skip
HEAD_DIM = 8


def tiny_model(key: str) -> nn.Module:
    torch.manual_seed(0)
    return build(*MODELS[key][0]).eval()


def apply_tiny(key: str, steps: list[dict], model: nn.Module | None = None):
    """``steps`` applied to (a copy of) ``model`` (default: a fresh one), traced on a batch."""
    return apply_strategy(tiny_model(key) if model is None else model, steps,
                          example_input=MODELS[key][3]())  # fmt: skip


def _layer(model: nn.Module, attention: str, rel: str) -> nn.Linear:
    if rel.startswith("../"):
        return model.get_submodule(f"{attention.rsplit('.', 1)[0]}.{rel[3:]}")
    return model.get_submodule(f"{attention}.{rel}")


def _expected_removed(model: nn.Module, key: str, attention: str, p: int, count: int) -> list[int]:
    """The oracle's choice: the ``count`` heads whose q/k/v rows and output columns have the
    smallest p-norm, computed head by head."""
    q, k, v, o = (_layer(model, attention, rel).weight.detach() for rel in MODELS[key][2])
    norms = []
    for h in range(4):
        rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        parts = [q[rows], k[rows], v[rows], o[:, rows]]
        norms.append(sum(float(t.abs().pow(p).sum()) for t in parts) ** (1 / p))
    return sorted(sorted(range(4), key=lambda h: norms[h])[:count])


def _zeroed(model: nn.Module, key: str, removed: dict[str, list[int]]) -> nn.Module:
    """The dense oracle: the heads' output-projection columns zeroed (their contribution)."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for attention, heads in removed.items():
            out = _layer(oracle, attention, MODELS[key][2][3])
            for h in heads:
                out.weight[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
    return oracle


@pytest.mark.parametrize("key", ["vit", "bert"])
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_the_lowest_norm_heads_go_and_the_model_equals_the_zeroed_oracle(key, criterion):
    model = tiny_model(key)
    cm = apply_tiny(key, [{"op": "head_prune", "ratio": 0.5, "criterion": criterion}], model)
    report = cm.report[0]
    p = 1 if criterion == "l1" else 2
    removed = {a: report["heads"][a]["removed"] for a in MODELS[key][1]}
    for attention, heads in removed.items():
        assert heads == _expected_removed(model, key, attention, p, 2), attention
        assert report["heads"][attention]["kept"] == 2
        q, k, v, o = (_layer(cm.model, attention, rel) for rel in MODELS[key][2])
        assert q.out_features == k.out_features == v.out_features == o.in_features == 16
        assert cm.model.get_submodule(attention).num_attention_heads == 2
    x = MODELS[key][3]()
    with torch.no_grad():
        torch.testing.assert_close(cm.model(x), _zeroed(model, key, removed)(x), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    assert report["params"] < sum(t.numel() for t in model.parameters())
    assert model.config.num_attention_heads == 4  # the input model is untouched


def test_vit_config_describes_the_pruned_model_so_it_rebuilds_from_it():
    cm = apply_tiny("vit", [{"op": "head_prune", "ratio": 0.25}])
    assert cm.report[0]["config"] == {"num_attention_heads": 3, "head_dim": HEAD_DIM}
    assert (cm.model.config.num_attention_heads, cm.model.config.head_dim) == (3, HEAD_DIM)
    rebuilt = build(VIT[0], {**VIT[1], "num_attention_heads": 3, "head_dim": HEAD_DIM}).eval()
    rebuilt.load_state_dict(cm.model.state_dict())  # every shape fits
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), cm.model(x))


def test_bert_modules_are_updated_and_its_config_which_cannot_say_so_is_left():
    cm = apply_tiny("bert", [{"op": "head_prune", "ratio": 0.5}])
    attention = cm.model.get_submodule(MODELS["bert"][1][0])
    assert (attention.num_attention_heads, attention.all_head_size) == (2, 16)
    assert "config" not in cm.report[0] and cm.model.config.num_attention_heads == 4


def test_include_limits_the_modules_and_at_least_one_head_is_kept():
    cm = apply_tiny("vit", [{"op": "head_prune", "ratio": 0.99, "include": r"layers\.1\."}])
    assert list(cm.report[0]["heads"]) == ["vit.layers.1.attention"]
    assert cm.report[0]["heads"]["vit.layers.1.attention"]["kept"] == 1
    assert cm.model.vit.layers[0].attention.q_proj.out_features == 32
    assert "config" not in cm.report[0]  # the layers now differ: the config cannot say it


@pytest.mark.parametrize("key", ["vit", "bert"])
def test_checkpoint_round_trips_under_every_runtime(tmp_path, key):
    (architecture, config), attentions = MODELS[key][0], MODELS[key][1]
    cm = apply_tiny(key, [{"op": "head_prune", "ratio": 0.5}, {"op": "neuron_prune", "ratio": 0.5}])
    x = MODELS[key][3]()
    with torch.no_grad():
        expected = cm.model.eval()(x)
    path = tmp_path / "heads.safetensors"
    save_checkpoint(cm, path, architecture=architecture, config=config)
    modules = read_manifest(path)["modules"]
    q = f"{attentions[0]}.{MODELS[key][2][0]}"
    assert modules[q] == {"kind": "linear", "args": {"in_features": 32, "out_features": 16,
                                                       "bias": True}}  # fmt: skip
    for runtime in ("auto", "packed", "dense"):
        loaded, manifest = load_checkpoint(path, runtime=runtime)
        assert manifest["config"] == config
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["vit", "bert"])
def test_onnx_and_pt2_exports_compute_what_the_pruned_model_does(tmp_path, key):
    ort = pytest.importorskip("onnxruntime")
    cm = apply_tiny(key, [{"op": "head_prune", "ratio": 0.5}])
    x = MODELS[key][3]()
    with torch.no_grad():
        expected = cm.model.eval()(x).numpy()
    shape = list(x.shape[1:])
    export_onnx(cm.model, shape, "float32", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (got,) = session.run(None, {"input": x.numpy()})
    assert abs(got - expected).max() <= 1e-4
    export_pt2(cm.model, shape, "float32", tmp_path / "m.pt2")
    program = torch.export.load(str(tmp_path / "m.pt2"))
    assert abs(program.module()(x).detach().numpy() - expected).max() <= 1e-4


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "head_prune", "ratio": 1.0}, "ratio"),
        ({"op": "head_prune", "ratio": -0.1}, "ratio"),
        ({"op": "head_prune", "ratio": "half"}, "ratio"),
        ({"op": "head_prune", "ratio": 0.5, "criterion": "ga"}, "criterion"),
        ({"op": "head_prune", "ratio": 0.5, "heads": 2}, "heads: unknown parameter"),
        ({"op": "head_prune"}, "ratio: required"),
    ],
)
def test_bad_parameters_are_refused_naming_them(step, message):
    with pytest.raises(ValueError, match=message):
        validate_steps([step])


def test_a_model_without_attention_or_with_masks_first_is_refused():
    mlp = build("mlp", {"in_features": 16, "hidden": [8], "num_classes": 3})
    with pytest.raises(ValueError, match="head_prune: include/exclude selected no attention"):
        apply_strategy(mlp, [{"op": "head_prune", "ratio": 0.5}])
    with pytest.raises(ValueError, match="head_prune: structural pruning must come before"):
        apply_tiny("vit", [{"op": "prune", "sparsity": 0.5}, {"op": "head_prune", "ratio": 0.5}])


class _Fused(nn.Module):
    """Attention of a layout head_prune does not know (torch's fused in-projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0].mean(1))


def test_attention_of_another_layout_is_left_alone_and_listed():
    torch.manual_seed(0)
    model = _Fused().eval()
    cm = apply_strategy(model, [{"op": "head_prune", "ratio": 0.5}])
    assert cm.report[0]["heads"] == {} and "not a layout head_prune knows" in cm.report[0]["skipped"]["attn"]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(cm.model(x), model(x))


def test_a_schedule_removes_the_share_of_the_heads_left_that_reaches_the_total():
    stages = plan_stages([{"op": "head_prune", "ratio": 0.5,
                           "schedule": {"stages": 2, "ramp": "linear"}}])  # fmt: skip
    assert [s.ops[0].ratio for s in stages] == pytest.approx([0.25, 1 / 3])
    cm = apply_tiny("vit", [])
    kept = []
    for stage in stages:
        extend(cm, stage.ops)
        kept.append(cm.report[-1]["heads"]["vit.layers.0.attention"]["kept"])
    assert kept == [3, 2]
