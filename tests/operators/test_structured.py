"""neuron_prune / filter_prune: removing channels equals zeroing them, BatchNorm included."""

import copy

import pytest
import torch

from operators.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from operators.strategy import apply_strategy
from operators.structured import zero_channels
from operators.zoo import build_model


def _randomize_batchnorm(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "config", "op", "shape"),
    [
        ("lenet-300-100", {}, "neuron_prune", (1, 28, 28)),
        ("lenet-5", {}, "filter_prune", (1, 28, 28)),
        ("vgg-cifar", {"width": 0.125}, "filter_prune", (3, 32, 32)),
        ("resnet-cifar", {"depth": 20, "width": 0.5}, "filter_prune", (3, 32, 32)),
    ],
)
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_removing_equals_zeroing(tmp_path, arch, config, op, shape, criterion):
    torch.manual_seed(0)
    model = _randomize_batchnorm(build_model(arch, config))
    cm = apply_strategy(model, [{"op": op, "ratio": 0.5, "criterion": criterion}])
    removed = cm.report[0]["removed_channels"]
    assert removed
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, removed)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(cm.model.eval()(x), zeroed(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in cm.model.parameters()) < 0.9 * sum(
        p.numel() for p in model.parameters()
    )
    path = tmp_path / "s.safetensors"
    save_checkpoint(cm, path, architecture=arch, config=config)
    loaded, manifest = load_checkpoint(path)
    assert manifest["modules"]
    assert {r["kind"] for r in read_manifest(path)["modules"].values()} <= {
        "linear", "conv2d", "batchnorm2d"
    }
    for (n1, t1), (n2, t2) in zip(loaded.state_dict().items(), cm.model.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(t1, t2), n1


def test_structural_ops_must_come_first():
    model = build_model("lenet-300-100", {})
    with pytest.raises(ValueError, match="must come before"):
        apply_strategy(model, [{"op": "prune", "sparsity": 0.5}, {"op": "neuron_prune", "ratio": 0.5}])


def test_output_layer_is_kept():
    cm = apply_strategy(build_model("lenet-300-100", {}), [{"op": "neuron_prune", "ratio": 0.5}])
    assert cm.model.fc3.out_features == 10 and cm.model.fc1.out_features == 150
