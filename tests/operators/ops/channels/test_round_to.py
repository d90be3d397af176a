"""``round_to`` on channel removal: every layer keeps a multiple of it or its full width (layers
too narrow to round and groups torch-pruning would not round are left whole and reported), and
the default space asks for it on every CNN."""

import copy

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.models.sources import build
from operators.models.zoo import build_model
from operators.ops.channels.graph import channel_round_to
from operators.train.default_space import default_search_space

MOBILENET = ("timm:mobilenetv3_small_100", {"num_classes": 10, "in_chans": 1})


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_filter_prune_keeps_widths_a_multiple_of_round_to():
    model = build_model("vgg-cifar", {}).eval()
    cm = apply_strategy(model, [{"op": "filter_prune", "ratio": 0.41, "round_to": 8}],
                        example_input=torch.randn(1, 3, 32, 32))  # fmt: skip
    widths = conv_widths(cm.model).values()
    assert all(w % 8 == 0 for w in widths) and sum(widths) < sum(conv_widths(model).values())


def test_mobilenet_widths_are_multiples_of_8_or_whole_and_its_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    model = build(*MOBILENET).eval()
    before = conv_widths(model)
    cm = apply_strategy(copy.deepcopy(model), [{"op": "filter_prune", "ratio": 0.3, "round_to": 8}],
                        example_input=torch.randn(1, 1, 32, 32))  # fmt: skip
    after = conv_widths(cm.model)
    changed = {n for n in before if after[n] != before[n]}
    assert len(changed) > len(before) / 2
    assert all(after[n] % 8 == 0 for n in changed), {n: after[n] for n in changed}
    narrow = {n for n, w in before.items() if w < 16 and not n.startswith("classifier")}
    assert narrow and not narrow & changed  # the 8-filter squeeze-excite convs stay whole
    skipped = cm.report[0]["skipped"]
    assert set(skipped) & narrow and all("fewer than 2 x round_to (16)" in skipped[n] for n in skipped)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = cm.model.eval()(x)
    assert out.shape == (3, 10)
    path = tmp_path / "mobilenet.safetensors"
    save_checkpoint(cm, path, architecture=MOBILENET[0], config=MOBILENET[1])
    loaded, _ = load_checkpoint(path)
    assert conv_widths(loaded) == after
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, rtol=1e-5, atol=1e-5)


class GroupedConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 48, 1)
        self.grouped = nn.Conv2d(48, 48, 3, padding=1, groups=3)
        self.b = nn.Conv2d(48, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.grouped(self.a(x))).mean((2, 3)))


def test_layers_coupled_to_a_grouped_conv_are_left_whole_with_the_reason():
    torch.manual_seed(0)
    cm = apply_strategy(GroupedConvNet().eval(), [{"op": "filter_prune", "ratio": 0.2, "round_to": 8}],
                        example_input=torch.randn(1, 3, 8, 8))  # fmt: skip
    assert conv_widths(cm.model) == {"a": 48, "grouped": 48, "b": 24}
    skipped = cm.report[0]["skipped"]
    assert set(skipped) == {"a", "grouped"} and all("grouped conv (groups=3)" in why for why in skipped.values())


def test_only_layers_too_narrow_to_round_selected_is_a_reported_no_op():
    cm = apply_strategy(build_model("lenet-5", {}), [{"op": "filter_prune", "ratio": 0.5, "round_to": 8, "include": "conv1"}])
    assert conv_widths(cm.model) == {"conv1": 6, "conv2": 16}
    assert cm.report[0]["removed_channels"] == {} and "conv1" in cm.report[0]["skipped"]


def test_round_to_is_refused_with_the_ga_and_out_of_range():
    with pytest.raises(ValueError, match="round_to works with criterion l1 or l2"):
        apply_strategy(build_model("vgg-cifar", {}),
                       [{"op": "filter_prune", "ratio": 0.3, "criterion": "ga", "round_to": 8}])  # fmt: skip
    with pytest.raises(ValueError, match="round_to"):
        apply_strategy(build_model("vgg-cifar", {}), [{"op": "filter_prune", "ratio": 0.3, "round_to": 0}])


def test_the_default_space_rounds_filters_on_every_cnn():
    def filters_step(model: nn.Module) -> dict:
        space = default_search_space(model)
        return next(s for s in space["strategies"] if s["name"] == "filters+fp16")["steps"][0]

    for model in (build_model("vgg-cifar", {}), build_model("lenet-5", {}), build(*MOBILENET)):
        assert channel_round_to(model) == 8
        assert filters_step(model)["round_to"] == 8
    assert channel_round_to(build_model("lenet-300-100", {})) == 1
