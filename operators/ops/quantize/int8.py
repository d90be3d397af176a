"""Per-output-channel symmetric int8 weights and a Linear layer that runs on them.

``q = clamp(round(w / s), -127, 127)`` with ``s = max|w_row| / 127`` per output channel
(row of the 2-D view; conv weights are flattened per filter), so ``w ~= q * s``.

:class:`Int8Linear` keeps only ``q`` (int8) and ``s`` (float32) and computes
``x @ (q * s).T + b``. Kernels (torch 2.13, CPU, without torchao):

- ``"int8pack"``: ``torch._weight_int8pack_mm`` (weight-only int8, activations stay float):
  matches the dequantised dense forward to float rounding; fast for small batches only
  on CPUs without AMX/VNNI-tuned paths;
- ``"dequant"``: dequantise, then ``F.linear`` (the fallback, any device, any batch);
- ``"auto"``: ``int8pack`` for inputs of at most :data:`INT8PACK_MAX_ROWS` rows where the op
  exists for the input's device and dtype, else ``dequant``.

Not used: ``torch._int_mm`` (W8A8; on CPU a slow reference kernel, and quantising the
activations breaks the equality with the dense forward) and ``torch.ops.quantized.
linear_dynamic`` (fbgemm W8A8, fast at large batches, but it needs quantized-tensor
creation functions that torch 2.13 deprecates).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INT8_MAX = 127
INT8PACK_MAX_ROWS = 32
KERNELS = ("auto", "int8pack", "dequant")


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(q int8 like w, scales float32 (w.shape[0],))``.

    An all-zero channel gets scale 1 (and zeros), so dequantising never divides by zero.
    """
    mat = w.detach().reshape(w.shape[0], -1).float()
    scales = mat.abs().amax(dim=1) / INT8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(mat / scales[:, None]), -INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(w.shape), scales


def dequantize_per_channel(
    q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``q * scales`` per output channel, in ``dtype``."""
    mat = q.reshape(q.shape[0], -1).to(dtype) * scales.to(dtype)[:, None]
    return mat.reshape(q.shape)


def has_int8pack_kernel(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> bool:
    """True if ``torch._weight_int8pack_mm`` runs for this device and activation dtype."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.ones(1, 32, device=device, dtype=dtype)
        w = torch.ones(8, 32, device=device, dtype=torch.int8)
        torch._weight_int8pack_mm(x, w, torch.ones(8, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError):
        return False
    return True


class Int8Linear(nn.Module):
    """A Linear layer stored as int8 weights with per-output-channel scales.

    ``forward`` accepts any leading batch dimensions and returns ``x``'s dtype; see the
    module docstring for ``kernel``.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None = None,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel: must be one of {', '.join(KERNELS)}; got {kernel!r}")
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError("qweight: must be a 2-D int8 tensor (out_features, in_features)")
        self.kernel = kernel
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._int8pack_ok: dict[tuple[str, torch.dtype], bool] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto") -> Int8Linear:
        """Quantise ``linear``'s weight per output channel (bias kept in float32)."""
        q, scales = quantize_per_channel(linear.weight)
        return cls(q, scales, linear.bias, kernel)

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer represents."""
        return dequantize_per_channel(self.qweight, self.scales, dtype)

    def _use_int8pack(self, x: torch.Tensor) -> bool:
        if self.kernel == "dequant":
            return False
        key = (str(x.device), x.dtype)
        if key not in self._int8pack_ok:
            self._int8pack_ok[key] = has_int8pack_kernel(x.device, x.dtype)
        if self.kernel == "int8pack":
            if not self._int8pack_ok[key]:
                raise RuntimeError(f"kernel int8pack: not available for {key}")
            return True
        rows = x.numel() // max(1, x.shape[-1])
        return self._int8pack_ok[key] and rows <= INT8PACK_MAX_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_int8pack(x):
            flat = x.reshape(-1, self.in_features).contiguous()
            out = torch._weight_int8pack_mm(flat, self.qweight, self.scales.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"
