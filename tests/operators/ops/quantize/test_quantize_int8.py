"""Int8 per-channel weights: quantisation error bound, Int8Linear equals the dequantised dense."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from operators.ops.quantize.int8 import (
    Int8Linear,
    dequantize_per_channel,
    has_int8pack_kernel,
    quantize_per_channel,
)


def test_quantize_per_channel_error_within_half_a_step():
    w = torch.randn(16, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    w[3] = 0  # an all-zero filter
    q, scales = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scales.shape == (16,)
    assert int(q.abs().max()) == 127
    err = (dequantize_per_channel(q, scales) - w).abs().reshape(16, -1).amax(dim=1)
    assert torch.all(err <= scales / 2 + 1e-7)
    assert torch.all(q[3] == 0)


@pytest.mark.parametrize("kernel", ["auto", "int8pack", "dequant"])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_int8_linear_matches_dequantised_dense(kernel, rows):
    if kernel == "int8pack" and not has_int8pack_kernel():
        pytest.skip("torch._weight_int8pack_mm not available here")
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    layer = Int8Linear.from_linear(linear, kernel=kernel)
    x = torch.randn(rows, 96)
    expected = F.linear(x, layer.dequantized_weight(), linear.bias.detach())
    assert torch.allclose(layer(x), expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(layer(x.reshape(1, rows, 96)), expected.reshape(1, rows, 40), atol=1e-4)


def test_int8_linear_stores_int8_buffers_only():
    linear = nn.Linear(8, 4)
    layer = Int8Linear.from_linear(linear)
    assert list(dict(layer.named_parameters())) == []  # nothing for an optimizer to move
    state = {k: (v.dtype, tuple(v.shape)) for k, v in layer.state_dict().items()}
    assert state == {
        "qweight": (torch.int8, (4, 8)), "scales": (torch.float32, (4,)),
        "bias": (torch.float32, (4,)),
    }  # fmt: skip
    q, scales = quantize_per_channel(linear.weight.detach())
    assert torch.equal(layer.qweight, q) and torch.equal(layer.scales, scales)
    assert torch.equal(layer.bias, linear.bias.detach())
    assert "bias" not in Int8Linear.from_linear(nn.Linear(8, 4, bias=False)).state_dict()


def test_unknown_kernel_rejected():
    q, s = quantize_per_channel(torch.randn(4, 8))
    with pytest.raises(ValueError, match="kernel"):
        Int8Linear(q, s, kernel="fbgemm")
