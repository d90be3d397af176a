"""Channel removal on the dependency graph: removing channels equals zeroing them (BatchNorm,
residuals included), named channels go exactly, and the file stores the smaller layers."""

import copy

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.models.zoo import build_model
from operators.ops.channels.graph import remove_named_channels, zero_channels


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
    assert set(removed) <= set(manifest["modules"])  # every shrunk layer records its shape
    assert {r["kind"] for r in manifest["modules"].values()} <= {"linear", "conv2d", "batchnorm2d"}
    for (n1, t1), (n2, t2) in zip(
        loaded.state_dict().items(), cm.model.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(t1, t2), n1


def test_named_channels_are_removed_exactly_and_the_output_layer_is_kept():
    torch.manual_seed(0)
    model = build_model("lenet-300-100", {"in_features": 64})
    cm = apply_strategy(model, [])
    removed = remove_named_channels(cm, {"fc1": [3, 1, 3], "fc2": list(range(100)), "fc3": [0]})
    assert removed == {"fc1": [1, 3], "fc2": list(range(99))}  # a layer keeps one channel
    assert cm.structural
    assert [cm.model.fc1.out_features, cm.model.fc2.out_features, cm.model.fc3.out_features] == [
        298,
        1,
        10,
    ]
    kept = [i for i in range(300) if i not in (1, 3)]
    assert torch.equal(cm.model.fc1.weight, model.fc1.weight[kept])
    assert torch.equal(cm.model.fc2.weight, model.fc2.weight[99:, kept])
    assert torch.equal(cm.model.fc3.weight, model.fc3.weight[:, 99:])
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, removed)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(cm.model(x), zeroed(x), atol=1e-5, rtol=1e-5)
