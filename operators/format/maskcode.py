"""Context-adaptive coding of 2-D bitmasks (the nonzero patterns of pruned weights), exact.

A pruned weight's nonzero pattern, viewed ``[rows, cols]`` (a weight ``[out, in, k, k]`` as
``[out, in * k * k]``), is no Bernoulli source: in an MNIST-trained ``fc1`` the border pixels'
columns lose every weight while central ones keep many, and a neuron keeps pixels in blobs
(neighbours in the image). Order-0 coding (:mod:`operators.format.ans`) sees none of that;
here each bit is coded by binary rANS with the probability of a one learnt from its context,
by adaptive counts the decoder reproduces exactly, so no table is stored. The context of bit
``(r, c)`` (one of ``4 * BUCKETS`` cells):

- its left neighbour ``(r, c - 1)`` and its "up" neighbour ``(r, c - offset)`` (``offset``:
  the width of a 2-D input, ``sqrt(cols)`` when whole, e.g. 28 for MNIST's 784 pixels; the
  encoder tries 0, no such neighbour, too, and keeps the smaller);
- its column's density so far, ``(ones + 1/2) / (rows seen + 1)``, quantised to one of
  :data:`BUCKETS` buckets in half-bit steps of ``log2(p / (1 - p))`` (integer arithmetic).

Each cell counts its zeros and ones; the probability of a one is the cell's
Krichevsky-Trofimov estimate ``(2 n1 + 1) / (2 n + 2)`` at :data:`PRECISION` bits, within
``[1, 2**PRECISION - 1]``. Rows are coded ``lanes`` at a time (one interleaved rANS lane
each, as in :mod:`operators.format.ans`), column by column: a step codes one column of a block
of rows, with the cell counts as they stood before the step and the column densities of the
blocks above, so the lanes advance together in numpy. ``lanes`` follows from the shape
(:func:`lanes_for`: a lane per :data:`BITS_PER_LANE` bits, at most one per row); a shape that
would take more than :data:`MAX_STEPS` steps is not coded here (ValueError), which bounds the
work of any file.

Payload: ``offset`` (varint), the lanes' final 32-bit states (little-endian), then the 16-bit
renormalisation words (little-endian) in decoding order. States live in ``[2**16, 2**32)``;
a decoder that ends anywhere else, runs out of words or has words left raises ValueError.
:func:`to_stream` / :func:`from_stream` turn a mask into the bytes of a position stream and
back (np.packbits, ``pack_indices(., 1)`` or the gap codec), so the container can store the
stream as its mask and give back exactly its bytes.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import torch

from operators.format import ans
from operators.format.codecs import ByteReader, decode_gaps, encode_gaps, varint

PRECISION = 15
TOTAL = 1 << PRECISION
BITS_PER_LANE = 8192
MAX_STEPS = 1 << 16
_SIDE = 20  # column buckets each side of p = 1/2: half-bit steps of log-odds, to p = 2**-11
BUCKETS = 2 * _SIDE + 1
_HALF = 1 << 15  # p = 1/2 in the 16-bit fixed point of the column densities
# floor(2**16 * 2**(-1 - j / 2)), j = 0.._SIDE-1, increasing (exact: integer square roots)
_EDGES = [math.isqrt(1 << (30 - j)) for j in range(_SIDE)][::-1]
_CELLS = 4 * BUCKETS
_LOW = 1 << 16


def lanes_for(rows: int, cols: int) -> int:
    """Lanes (rows coded together) for a ``[rows, cols]`` mask; ValueError if that would take
    over :data:`MAX_STEPS` steps."""
    lanes = max(1, min(rows, -(-rows * cols // BITS_PER_LANE)))
    if -(-rows // lanes) * cols > MAX_STEPS:
        raise ValueError(f"a [{rows}, {cols}] mask takes too many steps to context-code")
    return lanes


def steps_for(rows: int, cols: int) -> int:
    """Decoding steps of a ``[rows, cols]`` mask (ValueError past :data:`MAX_STEPS`)."""
    return -(-rows // lanes_for(rows, cols)) * cols


def _bucket(ones: int, seen: int) -> int:
    """The log-odds bucket (0 .. BUCKETS-1) of the density ``(ones + 1/2) / (seen + 1)``."""
    q = ((2 * ones + 1) << 16) // (2 * seen + 2)
    k = _SIDE - bisect_right(_EDGES, min(q, 2 * _HALF - q))
    return _SIDE - k if q <= _HALF else _SIDE + k


class _Coder:
    """The model both directions share: per step (one column of a block of ``lanes`` rows)
    the frequencies of a one, then the step's bits counted in."""

    def __init__(self, rows: int, cols: int, offset: int) -> None:
        self.rows, self.cols, self.offset = rows, cols, offset
        self.lanes = lanes_for(rows, cols)
        self.col_ones = [0] * cols
        self.counts = np.zeros(2 * _CELLS, dtype=np.int64)  # zeros and ones of each cell

    def blocks(self) -> range:
        return range(0, self.rows, self.lanes)

    def frequencies(self, block: np.ndarray, top: int, col: int) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies of a one, cells) of column ``col`` of ``block`` (rows from ``top``)."""
        left = block[:, col - 1] if col else 0
        up = block[:, col - self.offset] if self.offset and col >= self.offset else 0
        cell = 2 * (4 * _bucket(self.col_ones[col], top) + 2 * left + up)
        if np.ndim(cell) == 0:
            cell = np.full(block.shape[0], cell, dtype=np.int64)
        zeros, ones = self.counts[cell], self.counts[cell + 1]
        freq = ((2 * ones + 1) * TOTAL) // (2 * (zeros + ones) + 2)
        return np.clip(freq, 1, TOTAL - 1).astype(np.uint64), cell

    def count(self, block: np.ndarray, col: int, cell: np.ndarray) -> None:
        bits = block[:, col]
        self.counts += np.bincount(cell + bits, minlength=self.counts.size)
        self.col_ones[col] += int(bits.sum())


def encode(mask: np.ndarray, offset: int | None = None) -> bytes:
    """The payload of the 2-D bool ``mask`` (ValueError for a shape :func:`lanes_for` refuses).

    ``offset``: the column distance of the "up" neighbour (a 2-D input's width); None tries
    none and ``sqrt(cols)`` when that is whole, and keeps the smaller payload."""
    rows, cols = mask.shape
    if offset is None:
        side = math.isqrt(cols)
        tries = [0] + ([side] if 1 < side < cols and side * side == cols else [])
        return min((encode(mask, t) for t in tries), key=len)
    coder = _Coder(rows, cols, offset)
    bits = mask.astype(np.int64)
    steps = []  # (frequency of each lane's bit, its lower cumulative frequency)
    for top in coder.blocks():
        block = bits[top : top + coder.lanes]
        for col in range(cols):
            freq, cell = coder.frequencies(block, top, col)
            ones = block[:, col].astype(bool)
            zero = np.uint64(TOTAL) - freq
            steps.append((np.where(ones, freq, zero), np.where(ones, zero, np.uint64(0))))
            coder.count(block, col, cell)
    x = np.full(coder.lanes, _LOW, dtype=np.uint64)
    emitted = []
    for fs, cs in reversed(steps):
        xs = x[: fs.size]
        out = xs >= (fs << np.uint64(32 - PRECISION))
        emitted.append((xs[out] & np.uint64(0xFFFF)).astype("<u2"))
        xs[out] >>= np.uint64(16)
        x[: fs.size] = ((xs // fs) << np.uint64(PRECISION)) + (xs % fs) + cs
    words = np.concatenate(emitted[::-1]) if emitted else np.zeros(0, dtype="<u2")
    return varint(offset) + x.astype("<u4").tobytes() + words.tobytes()


def decode(payload: bytes, rows: int, cols: int) -> np.ndarray:
    """The 2-D bool mask :func:`encode` stored in ``payload`` (ValueError if invalid)."""
    lanes = lanes_for(rows, cols)
    reader = ByteReader(payload, "context-coded mask")
    offset = reader.varint()
    if offset >= cols:
        raise ValueError(f"context-coded mask has an offset {offset} for {cols} columns")
    x, words = ans.read_states(reader, lanes, "context-coded mask")
    coder = _Coder(rows, cols, offset)
    out = np.empty((rows, cols), dtype=np.int64)
    total, low, used = np.uint64(TOTAL), np.uint64(TOTAL - 1), 0
    for top in coder.blocks():
        block = out[top : top + lanes]
        for col in range(cols):
            freq, cell = coder.frequencies(block, top, col)
            zero = total - freq
            xs = x[: block.shape[0]]
            slot = xs & low
            ones = slot >= zero
            xs = np.where(ones, freq, zero) * (xs >> np.uint64(PRECISION)) + slot
            xs -= np.where(ones, zero, np.uint64(0))
            need = np.flatnonzero(xs < _LOW)
            if need.size:
                if used + need.size > words.size:
                    raise ValueError("context-coded mask ran out of words")
                xs[need] = (xs[need] << np.uint64(16)) | words[used : used + need.size]
                used += need.size
            x[: block.shape[0]] = xs
            block[:, col] = ones
            coder.count(block, col, cell)
    if used != words.size or (x != _LOW).any():
        raise ValueError("context-coded mask does not decode to its declared bits")
    return out.astype(bool)


def estimate_bits(mask: np.ndarray) -> float:
    """Bits of the order-0 (Bernoulli) entropy of ``mask``, for comparison."""
    p = float(mask.mean()) if mask.size else 0.0
    return 0.0 if p in (0.0, 1.0) else -mask.size * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


# -- position streams as masks ----------------------------------------------------------------

# how a mask is laid out as the bytes of a stream: 0 np.packbits (most significant bit first),
# 1 pack_indices(., 1) (least significant first), 1 + w the gap codec with w-bit symbols
LAYOUTS = 10


def to_stream(mask: np.ndarray, layout: int) -> bytes:
    """The stream bytes of ``mask`` in ``layout`` (see :data:`LAYOUTS`)."""
    flat = mask.reshape(-1)
    if layout < 2:
        return np.packbits(flat, bitorder="little" if layout else "big").tobytes()
    return encode_gaps(np.flatnonzero(flat), layout - 1)[0].numpy().tobytes()


def from_stream(data: bytes, layout: int, rows: int, cols: int) -> np.ndarray | None:
    """A ``[rows, cols]`` mask whose :func:`to_stream` is exactly ``data``, or None."""
    n = rows * cols
    packed = np.frombuffer(data, dtype=np.uint8)
    if layout < 2:
        if packed.size != -(-n // 8):
            return None
        masks = [np.unpackbits(packed, count=n, bitorder="little" if layout else "big")]
    else:
        width, masks = layout - 1, []
        # the zero bits that pad the last byte read as symbols too: the fewest that fit first
        symbols = (packed.size - 1) * 8 // width + 1 if packed.size else 0
        while -(-symbols * width // 8) == packed.size:
            try:
                positions = decode_gaps(torch.from_numpy(packed.copy()), width, symbols)
            except ValueError:
                positions = None
            if positions is not None and (not positions.size or positions[-1] < n):
                mask = np.zeros(n, dtype=np.uint8)
                mask[positions] = 1
                masks.append(mask)
            symbols += 1
    for mask in masks:
        mask = mask.astype(bool).reshape(rows, cols)
        if to_stream(mask, layout) == bytes(data):
            return mask
    return None
