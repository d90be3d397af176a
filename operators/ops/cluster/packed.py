"""The packed kind of ``cluster``: ``clustered``, a codebook, bit-packed indices and positions."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from operators.core.model import PackSpec
from operators.core.registry import register_kind
from operators.format.codecs import (
    decode_positions,
    encode_positions,
    pack_indices,
    position_bytes,
    unpack_indices,
)
from operators.format.stored import StoredLayer


@register_kind
class ClusteredLayer(StoredLayer):
    """Kind ``clustered``: ``codebook`` (k values), ``indices`` (``bits``-bit, one per
    nonzero, packed) and ``positions`` (the nonzeros' positions, see :mod:`operators.format.codecs`);
    with ``bias_bits`` (``cluster``'s option) the bias too, as ``bias_codebook`` (``bias_k``
    values) and ``bias_indices`` (``bias_bits``-bit, one per output), else stored as is.
    """

    kind: ClassVar[str] = "clustered"
    SOURCES: ClassVar[dict[str, str]] = {"codebook": "weight", "bias": "bias"}

    def _init_format(
        self, bits: int, k: int, nnz: int, positions: str = "all", symbols: int = 0,
        bias_bits: int = 0, bias_k: int = 0,
    ) -> None:  # fmt: skip
        if not (1 <= bits <= 8 and 0 <= k <= 2**bits and 0 <= nnz <= self.numel):
            raise ValueError(f"bad clustered format: bits={bits}, k={k}, nnz={nnz}")
        self.bits, self.k, self.nnz = bits, k, nnz
        self.encoding, self.symbols = positions, symbols
        self.codebook = nn.Parameter(torch.zeros(k))
        n_index = -(-nnz * bits // 8)
        self.register_buffer("indices", torch.zeros(n_index, dtype=torch.uint8))
        n_pos = position_bytes(positions, symbols, self.numel)
        self.register_buffer("positions", torch.zeros(n_pos, dtype=torch.uint8))
        self.bias_bits, self.bias_k = bias_bits, bias_k
        if bias_bits:
            self._init_bias_codebook(bias_bits, bias_k)

    def _init_bias_codebook(self, bits: int, k: int) -> None:
        """The bias as ``bias_codebook`` (k values) and ``bias_indices`` (``bits``-bit); the
        ``bias`` the forward pass adds is their decoding (by :meth:`decode`), not stored."""
        if self.bias is None or not (1 <= bits <= 8 and 1 <= k <= 2**bits):
            raise ValueError(f"bad clustered bias format: bias_bits={bits}, bias_k={k}")
        n = self.bias.numel()
        del self.bias
        self.register_buffer("bias", torch.zeros(n), persistent=False)
        self.bias_codebook = nn.Parameter(torch.zeros(k))
        self.register_buffer("bias_indices", torch.zeros(-(-n * bits // 8), dtype=torch.uint8))
        self.SOURCES = {"codebook": "weight", "bias_codebook": "bias"}

    def _decode_bias(self) -> None:
        indices = unpack_indices(self.bias_indices.cpu(), self.bias_bits, self.bias.numel())
        if int(indices.max()) >= self.bias_k:
            raise ValueError("clustered: a bias index points outside its codebook")
        with torch.no_grad():
            self.bias.copy_(self.bias_codebook.detach().cpu().float()[indices])

    def format_config(self) -> dict[str, Any]:
        bias = {"bias_bits": self.bias_bits, "bias_k": self.bias_k} if self.bias_bits else {}
        return {"bits": self.bits, "k": self.k, "nnz": self.nnz, "positions": self.encoding,
                "symbols": self.symbols, **bias}  # fmt: skip

    @classmethod
    def bias_format(cls, bias: torch.Tensor | None, spec: PackSpec) -> dict[str, Any]:
        bits = spec.args.get("bias_bits")
        if not bits or bias is None:
            return {}
        k = len(torch.unique(bias))
        if k > 2**bits:
            raise ValueError(f"clustered: {k} distinct bias values do not fit {bits}-bit indices")
        return {"bias_bits": bits, "bias_k": k}

    def _load_bias(self, bias: torch.Tensor) -> None:
        if not self.bias_bits:
            return super()._load_bias(bias)
        codebook, inverse = torch.unique(bias, return_inverse=True)
        self.bias_codebook.copy_(codebook)
        self.bias_indices.copy_(pack_indices(inverse, self.bias_bits))
        self._decode_bias()

    @classmethod
    def format_of(cls, weight: torch.Tensor, spec: PackSpec) -> dict[str, Any]:
        nonzero = weight.reshape(-1) != 0
        encoding, symbols, _ = encode_positions(nonzero)
        k = len(torch.unique(weight.reshape(-1)[nonzero]))
        bits = spec.args["bits"]
        if k > 2**bits:
            raise ValueError(f"clustered: {k} distinct values do not fit {bits}-bit indices")
        return {"bits": bits, "k": k, "nnz": int(nonzero.sum()), "positions": encoding,
                "symbols": symbols}  # fmt: skip

    def _load_format(self, weight: torch.Tensor, spec: PackSpec) -> None:
        flat = weight.reshape(-1)
        nonzero = flat != 0
        self.positions.copy_(encode_positions(nonzero)[2])
        codebook, inverse = torch.unique(flat[nonzero], return_inverse=True)
        self.codebook.copy_(codebook)
        self.indices.copy_(pack_indices(inverse, self.bits))

    def decode(self) -> torch.Tensor:
        """The dense weight; a clustered bias is decoded into ``bias`` on the way."""
        if self.bias_bits:
            self._decode_bias()
        nonzero = decode_positions(self.encoding, self.symbols, self.positions.cpu(), self.numel)
        if int(nonzero.sum()) != self.nnz:
            raise ValueError("clustered: positions and nnz disagree")
        indices = unpack_indices(self.indices.cpu(), self.bits, self.nnz)
        if self.nnz and int(indices.max()) >= self.k:
            raise ValueError("clustered: an index points outside the codebook")
        flat = torch.zeros(self.numel)
        flat[nonzero] = self.codebook.detach().cpu().float()[indices]
        return flat.view(self.weight_shape)
