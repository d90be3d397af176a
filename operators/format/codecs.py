"""Byte codecs of the packed formats: bit packing, the gap codec, position streams, blocks.

- :func:`pack_indices` / :func:`unpack_indices`: ``bits``-bit unsigned integers packed
  little-endian into bytes (cluster indices, unify block states, sign bits, gap symbols).
- The **gap codec** (Deep Compression's relative indices), the one encoding of sorted
  positions: gap ``g_i = pos_i - pos_{i-1} - 1`` (``pos_{-1} = -1``) written as ``bits``-bit
  symbols, ``M = 2**bits - 1`` being an escape that adds ``M`` and continues (``g`` is
  ``g // M`` escapes then ``g % M``). With ``bits=8`` the symbols are plain bytes: the
  checkpoint's ``index`` encoding (escape 255).
- Position streams (:func:`encode_positions`): the smallest of ``all`` (nothing stored), a
  bitmask (one bit per entry) and gap streams of 1..8 bits.
- :func:`block_view`: a weight viewed 2-D ``(out, rest)`` and zero-padded to whole blocks.
- :func:`varint` / :class:`ByteReader`: unsigned LEB128 numbers and bounds-checked reads, for
  the v3 container and the rANS coder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def check_bits(bits: int) -> int:
    """``bits`` if it is an integer in [1, 8]; ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: must be an integer in [1, 8], got {bits!r}")
    return bits


# -- bit packing ------------------------------------------------------------------------------


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """``bits``-bit unsigned integers (each < 2**bits) packed into ``ceil(n*bits/8)`` bytes.

    Little-endian bit order: value ``i`` occupies stream bits ``i*bits .. i*bits+bits-1``,
    least significant bit first, stream bit ``b`` being bit ``b % 8`` of byte ``b // 8``.
    """
    check_bits(bits)
    flat = indices.reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"indices: must be in [0, {2**bits}) for bits={bits}")
    if bits == 8:
        return flat.to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    return (stream << torch.arange(8)).sum(dim=1).to(torch.uint8)


def unpack_indices(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The ``n`` values :func:`pack_indices` stored in ``packed``, as int64."""
    check_bits(bits)
    if packed.numel() * 8 < n * bits:
        raise ValueError(f"packed: {packed.numel()} bytes cannot hold {n} {bits}-bit values")
    if bits == 8:
        return packed.reshape(-1)[:n].to(torch.int64).cpu()
    stream = (packed.reshape(-1).to(torch.int64).cpu()[:, None] >> torch.arange(8)) & 1
    stream = stream.reshape(-1)[: n * bits].reshape(n, bits)
    return (stream << torch.arange(bits)).sum(dim=1)


# -- the gap codec ----------------------------------------------------------------------------


def encode_gaps(positions: np.ndarray, bits: int = 8) -> tuple[torch.Tensor, int]:
    """Sorted positions -> (``bits``-bit gap symbols packed into bytes, number of symbols)."""
    escape = 2 ** check_bits(bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    lengths = gaps // escape + 1
    symbols = np.full(int(lengths.sum()), escape, dtype=np.int64)
    symbols[np.cumsum(lengths) - 1] = gaps % escape
    return pack_indices(torch.from_numpy(symbols), bits), len(symbols)


def decode_gaps(packed: torch.Tensor, bits: int = 8, symbols: int | None = None) -> np.ndarray:
    """Inverse of :func:`encode_gaps`: int64 positions (``symbols`` defaults to every byte's
    worth, exact for ``bits=8``). ValueError if the stream ends inside an escape sequence."""
    escape = 2 ** check_bits(bits) - 1
    n = packed.numel() * 8 // bits if symbols is None else symbols
    stream = unpack_indices(packed, bits, n).numpy()
    if stream.size and stream[-1] == escape:
        raise ValueError("index stream ends inside an escape sequence")
    ends = np.flatnonzero(stream != escape)
    return np.cumsum(stream, dtype=np.int64)[ends] + np.arange(ends.size)


# -- position streams -------------------------------------------------------------------------


def nonzero_bits(flat: torch.Tensor) -> torch.Tensor:
    """Bool mask of entries whose bit pattern is not all zero (so -0.0 counts as nonzero)."""
    if flat.is_floating_point():
        return flat.view(_SAME_WIDTH_INT[flat.element_size()]) != 0
    return flat != 0


def encode_positions(nonzero: torch.Tensor) -> tuple[str, int, torch.Tensor]:
    """The smallest encoding of a flat bool pattern: ``(encoding, symbols, bytes)``.

    ``encoding`` is ``"all"`` (every entry is nonzero: nothing stored), ``"bitmask"`` or
    ``"gap<bits>"``; ``symbols`` is the symbol count of a gap stream (else 0).
    """
    flat = nonzero.reshape(-1).cpu()
    if bool(flat.all()):
        return "all", 0, torch.zeros(0, dtype=torch.uint8)
    best = ("bitmask", 0, pack_indices(flat.to(torch.int64), 1))
    positions = np.flatnonzero(flat.numpy())
    for bits in range(1, 9):
        packed, n = encode_gaps(positions, bits)
        if packed.numel() < best[2].numel():
            best = (f"gap{bits}", n, packed)
    return best


def decode_positions(encoding: str, symbols: int, packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat bool pattern :func:`encode_positions` stored."""
    if encoding == "all":
        return torch.ones(numel, dtype=torch.bool)
    if encoding == "bitmask":
        return unpack_indices(packed, 1, numel).bool()
    if not encoding.startswith("gap") or not encoding[3:].isdigit() or not 1 <= int(encoding[3:]) <= 8:
        raise ValueError(f"unknown position encoding {encoding!r}")
    positions = decode_gaps(packed, int(encoding[3:]), symbols)
    if positions.size and (positions[-1] >= numel or positions[0] < 0):
        raise ValueError("position stream points outside the weight")
    out = torch.zeros(numel, dtype=torch.bool)
    out[torch.from_numpy(positions)] = True
    return out


def position_bytes(encoding: str, symbols: int, numel: int) -> int:
    """Bytes of a position stream, from the module's configuration."""
    if encoding == "all":
        return 0
    if encoding == "bitmask":
        return math.ceil(numel / 8)
    return math.ceil(symbols * int(encoding[3:]) / 8)


# -- blocks -----------------------------------------------------------------------------------


def block_view(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``weight`` as 2-D, zero-padded to whole blocks, viewed ``(R, C, rows, cols)``."""
    rows, cols = block
    w2 = weight.reshape(weight.shape[0], -1)
    pad_r, pad_c = -w2.shape[0] % rows, -w2.shape[1] % cols
    w2 = F.pad(w2, (0, pad_c, 0, pad_r))
    return w2.view(w2.shape[0] // rows, rows, w2.shape[1] // cols, cols).permute(0, 2, 1, 3)


# -- varints and bounded reads ----------------------------------------------------------------


def varint(n: int) -> bytes:
    """The unsigned LEB128 bytes of ``n`` >= 0 (7 bits a byte, low first, high bit: more)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class ByteReader:
    """Bounds-checked reads from ``data``: every overrun is a ValueError naming ``what``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ValueError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        n = 0
        for shift in range(0, 70, 7):
            byte = self.u8()
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
        raise ValueError(f"{self.what} has a malformed number")
