"""The model-source registry: zoo, timm and Hugging Face models built from tiny configs, sized on
the meta device, refused when they would download, run custom code or exceed the cap; weights
renamed by a key_map; the ops on timm and Hugging Face layers; checkpoints that record the source."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import (
    load_checkpoint,
    load_weights,
    read_manifest,
    save_checkpoint,
)
from operators.models.sources import (
    INPUT_KEY,
    SOURCES,
    MissingLibrary,
    SourceError,
    build,
    model_info,
    record_config,
    register_source,
    split_record_config,
)
from operators.models.weights import rename

pytest.importorskip("timm")
pytest.importorskip("transformers")

RESNET = ("timm:resnet18", {"num_classes": 3, "in_chans": 1, "channels": [8, 8, 16, 16],
                            "stem_width": 8})  # fmt: skip
MOBILENET = ("timm:mobilenetv3_small_100", {"num_classes": 4})
VIT = ("hf:image-classification", {
    "model_type": "vit", "image_size": 28, "patch_size": 7, "num_hidden_layers": 2,
    "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 5,
    "num_channels": 1,
})  # fmt: skip
BERT = ("hf:sequence-classification", {
    "model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 3,
    "max_position_embeddings": 64,
})  # fmt: skip


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model source tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    ("architecture", "config", "x", "classes"),
    [
        (*RESNET, torch.randn(2, 1, 16, 16), 3),
        (*MOBILENET, torch.randn(2, 3, 32, 32), 4),
        (*VIT, torch.randn(2, 1, 28, 28), 5),
        (*BERT, torch.randint(0, 100, (2, 12)), 3),
    ],
    ids=["timm-resnet18", "timm-mobilenetv3", "hf-vit", "hf-bert"],
)
def test_each_source_builds_from_a_tiny_config_and_forward_gives_logits(
    offline, architecture, config, x, classes
):
    model = build(architecture, config).eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, classes)


def test_bare_zoo_names_and_zoo_prefix_build_the_same_model():
    config = {"in_features": 64, "hidden": [8], "num_classes": 3}
    assert build("mlp", config).state_dict().keys() == build("zoo:mlp", config).state_dict().keys()


def test_model_info_counts_parameters_on_meta_and_settles_the_input():
    info = model_info(*VIT)
    real = sum(p.numel() for p in build(*VIT).parameters())
    assert info.params == real and info.kind == "hf"
    assert (info.input_shape, info.input_dtype) == ([1, 28, 28], "float32")
    assert model_info(*RESNET).input_shape == [1, 224, 224]  # timm's pretrained_cfg, in_chans
    text = model_info(*BERT, input_shape=[12])
    assert (text.input_shape, text.input_dtype) == ([12], "int64")
    with pytest.raises(SourceError) as err:
        model_info(*BERT)
    assert err.value.field == "input_shape"


def test_a_model_above_the_parameter_cap_is_refused_before_anything_is_allocated(monkeypatch):
    config = {"in_features": 64, "hidden": [100000, 100000], "num_classes": 10}
    built = []
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: built.append(self.weight))
    with pytest.raises(SourceError, match="more than the limit") as err:
        model_info("mlp", config, max_params=2_000_000_000)
    assert err.value.field == "config" and built and all(w.is_meta for w in built)
    assert model_info("mlp", config).params > 10**10  # meta: counted, never materialised


@pytest.mark.parametrize(
    ("architecture", "config", "field", "words"),
    [
        ("timm:resnet18", {"pretrained": True}, "config.pretrained", "nothing is downloaded"),
        ("timm:resnet18", {"checkpoint_path": "/etc/x"}, "config.checkpoint_path", "safetensors"),
        ("timm:resnett18", {}, "architecture", "nothing was downloaded"),
        ("hf:image-classification", {**VIT[1], "auto_map": {"AutoModel": "x.Y"}},
         "config.auto_map", "custom model code"),
        ("hf:image-classification", {**VIT[1], "trust_remote_code": True},
         "config.trust_remote_code", "custom model code"),
        ("hf:image-classification", {"model_type": "detr", "backbone": "resnet50"},
         "config.backbone", "hub"),
        ("hf:image-classification", {"model_type": "bert"}, "config.model_type", "allowed: "),
        ("hf:token-classification", {}, "architecture", "hf:image-classification"),
        ("nope:model", {}, "architecture", "timm:<name>"),
        ("mlp", {"widths": [3]}, "config", "allowed: in_features"),
    ],
)
def test_refusals_name_the_field_and_download_nothing(offline, architecture, config, field, words):
    with pytest.raises(SourceError) as err:
        model_info(architecture, config)
    assert err.value.field == field and words in str(err.value)


def test_a_missing_library_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(MissingLibrary, match="torchvision") as err:
        build("torchvision:resnet18", {})
    assert err.value.field == "architecture"
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingLibrary, match=r"pip install autocompress\[models\]"):
        build(*RESNET)


def test_register_source_is_the_hook_for_new_kinds(monkeypatch):
    monkeypatch.setitem(SOURCES, "tiny", SOURCES["zoo"])
    register_source("tiny", lambda name, config: nn.Linear(int(name), 2))
    assert build("tiny:5", {}).in_features == 5
    assert model_info("tiny:5", {}).params == 12


def test_the_input_spec_travels_inside_the_stored_config():
    stored = record_config({"num_classes": 3}, [1, 8, 8], "float32")
    assert split_record_config(stored) == ({"num_classes": 3}, [1, 8, 8], "float32")
    assert split_record_config({"num_classes": 3}) == ({"num_classes": 3}, None, "float32")
    with pytest.raises(SourceError) as err:
        build("timm:resnet18", stored)
    assert err.value.field == f"config.{INPUT_KEY}"


def test_a_sequential_mlp_loads_into_the_zoo_mlp_with_the_suggested_key_map(tmp_path):
    torch.manual_seed(0)
    user = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    path = tmp_path / "user.safetensors"
    save_file(user.state_dict(), str(path))
    config = {"in_features": 64, "hidden": [16], "num_classes": 10}
    with pytest.raises(SourceError) as err:
        load_weights(path, "mlp", config)
    message = str(err.value)
    assert err.value.field == "weights"
    assert "missing keys (4): fc1.weight" in message and "unexpected keys (4): 1.bias" in message
    assert 'key_map={"prefix": {"1.": "fc1.", "3.": "fc2."}}' in message
    model = load_weights(path, "mlp", config, key_map={"prefix": {"1.": "fc1.", "3.": "fc2."}})
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), user.eval()(x))


def test_a_key_map_that_maps_two_keys_to_one_is_refused():
    with pytest.raises(SourceError, match="maps both '0.weight' and '2.weight'") as err:
        rename(["0.weight", "2.weight"], {"0.weight": "fc1.weight", "2.weight": "fc1.weight"})
    assert err.value.field == "key_map"
    with pytest.raises(SourceError, match="maps both"):
        rename(["a.w", "fc1.w"], {"prefix": {"a.": "fc1."}})  # onto a name that stays


def test_weights_of_the_wrong_shape_are_listed_from_the_header(tmp_path):
    model = build(*RESNET)
    state = {k: v for k, v in model.state_dict().items() if k != "fc.bias"}
    state["fc.weight"] = torch.zeros(7, 16)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(SourceError) as err:
        load_weights(tmp_path / "w.safetensors", *RESNET)
    assert "missing keys (1): fc.bias" in str(err.value)
    assert "fc.weight [7, 16] (expected [3, 16])" in str(err.value)


TINY_VIT = ("hf:image-classification", {**VIT[1], "image_size": 8, "patch_size": 2})


@pytest.mark.parametrize(
    "steps",
    [
        [{"op": "prune", "sparsity": 0.5}, {"op": "cluster", "bits": 4},
         {"op": "quantize", "dtype": "float16"}],
        [{"op": "CHANNELS", "ratio": 0.3, "criterion": "l1"}],
    ],
    ids=["prune+cluster+fp16", "channels-l1"],
)
@pytest.mark.parametrize("model", [RESNET, TINY_VIT], ids=["timm-resnet18", "hf-vit"])
def test_ops_run_on_timm_and_hf_models_and_the_checkpoint_reloads_through_the_source(
    tmp_path, model, steps
):
    architecture, config = model
    # channel removal: conv filters of the CNN, FFN neurons of the ViT (its one conv, the
    # patch embedding, feeds the residual stream the attention fixes)
    channels = "filter_prune" if architecture.startswith("timm") else "neuron_prune"
    steps = [{**s, "op": channels} if s["op"] == "CHANNELS" else s for s in steps]
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    cm = apply_strategy(build(architecture, config).eval(), steps, example_input=x)
    path = tmp_path / "packed.safetensors"
    save_checkpoint(cm, path, architecture=architecture, config=config)
    manifest = read_manifest(path)
    assert (manifest["architecture"], manifest["config"]) == (architecture, config)
    packed, _ = load_checkpoint(path, runtime="dense")
    with torch.no_grad():
        assert torch.allclose(packed(x), cm.model.eval()(x), atol=1e-3)
