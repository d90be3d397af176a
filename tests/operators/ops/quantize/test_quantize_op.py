"""The ``quantize`` op: float16 / bfloat16 storage and int8 grids hold after every enforce,
only the selected parameters change, and bad dtypes are refused."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model
from operators.ops.quantize.op import Int8Grid


def nudge(cm) -> None:
    """Move every parameter off its grid, as an optimizer step does."""
    with torch.no_grad():
        for p in cm.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_quantize_keeps_weights_representable_after_enforce(lenet, dtype, torch_dtype):
    cm = apply_strategy(lenet, [{"op": "quantize", "dtype": dtype}])
    assert set(cm.value_dtypes) == {n for n, _ in lenet.named_parameters()}
    assert set(cm.value_dtypes.values()) == {torch_dtype}
    nudge(cm)
    cm.enforce()
    for p in cm.model.parameters():
        assert torch.equal(p, p.to(torch_dtype).float())


def test_quantize_include_selects_parameters(lenet):
    cm = apply_strategy(lenet, [{"op": "quantize", "include": "fc1"}])
    assert set(cm.value_dtypes) == {"fc1.weight", "fc1.bias"}
    assert torch.equal(cm.model.fc2.weight, lenet.fc2.weight)  # the others stay float32
    assert cm.report == [
        {
            "op": "quantize",
            "tensors": 2,
            "params": {"include": "fc1", "exclude": None, "dtype": "float16"},
        }
    ]


def test_int8_puts_each_weight_row_on_a_fixed_grid(lenet):
    cm = apply_strategy(lenet, [{"op": "quantize", "dtype": "int8"}])
    assert set(cm.packing) == {"fc1", "fc2", "fc3"} and not cm.value_dtypes
    grid = cm.constraints["fc1.weight"]
    assert isinstance(grid, Int8Grid)
    expected = lenet.fc1.weight.detach().abs().amax(1) / 127
    torch.testing.assert_close(grid.scales, expected)
    nudge(cm)
    cm.enforce()
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        w, scales = cm.model.get_parameter(name).detach(), cm.constraints[name].scales[:, None]
        q = torch.round(w / scales)
        assert torch.equal(q * scales, w) and q.abs().max() <= 127, name
    assert torch.equal(cm.constraints["fc1.weight"].scales, grid.scales)  # the scales stay
    assert not torch.equal(cm.model.fc1.bias, lenet.fc1.bias)  # biases stay free float32


def test_int8_conv_weights_are_quantised_per_filter():
    model = build_model("lenet-5", {})
    cm = apply_strategy(model, [{"op": "quantize", "dtype": "int8", "include": "conv"}])
    assert set(cm.packing) == {"conv1", "conv2"}
    w = cm.model.conv2.weight.detach()
    scales = cm.constraints["conv2.weight"].scales
    assert scales.shape == (16,)
    assert torch.equal(
        torch.round(w / scales[:, None, None, None]) * scales[:, None, None, None], w
    )


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "quantize", "dtype": "int4"}, "dtype: must be one of float16, bfloat16, int8"),
        ({"op": "quantize", "dtype": "float8"}, "dtype: must be one of float16, bfloat16"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)


def test_a_selection_without_parameters_is_refused(lenet):
    with pytest.raises(ValueError, match="quantize: include/exclude selected no floating-point"):
        apply_strategy(lenet, [{"op": "quantize", "include": "relu"}])
