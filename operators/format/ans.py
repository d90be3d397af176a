"""An exact order-0 entropy coder: interleaved rANS over symbols of 1-8 bits, vectorised.

Brotli codes bytes with LZ77 and Huffman codes, never below one bit per literal; a stream of
skewed small symbols (cluster indices of trained weights, gap symbols) is coded here at close
to its order-0 entropy instead. The symbol ``i`` of ``n`` goes to lane ``i % lanes``; all lanes
advance together (numpy), so a step costs a few vector operations.

Payload: ``lanes`` (varint), the quantised frequencies of the ``2**bits`` symbols (varints,
summing to :data:`TOTAL`), the lanes' final 32-bit states (little-endian), then the 16-bit
renormalisation words (little-endian) in decoding order. States live in ``[2**16, 2**32)``;
a decoder that ends anywhere else, or runs out of words, or has words left, raises ValueError.
"""

from __future__ import annotations

import numpy as np

from operators.format.codecs import ByteReader, varint

PRECISION = 12
TOTAL = 1 << PRECISION
_LOW = 1 << 16  # the lower bound of a state; renormalisation moves 16 bits at a time
_MAX_LANES = 1024


def lanes_for(count: int) -> int:
    """Lanes used for ``count`` symbols: about 1024 symbols a lane, 1 to 1024 lanes."""
    return max(1, min(_MAX_LANES, count // 1024))


def frequencies(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Counts of ``symbols`` scaled to sum to :data:`TOTAL`, every present symbol at least 1."""
    counts = np.bincount(symbols, minlength=alphabet).astype(np.int64)
    freq = np.where(counts > 0, np.maximum(1, counts * TOTAL // max(1, counts.sum())), 0)
    while freq.sum() > TOTAL:
        freq[np.argmax(freq)] -= 1
    freq[np.argmax(freq)] += TOTAL - freq.sum()
    return freq


def estimate(symbols: np.ndarray, alphabet: int) -> float:
    """Bytes of the order-0 entropy of ``symbols`` (a lower bound of :func:`encode`)."""
    counts = np.bincount(symbols, minlength=alphabet)
    p = counts[counts > 0] / max(1, symbols.size)
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


def encode(symbols: np.ndarray, bits: int) -> bytes:
    """The rANS payload of ``symbols`` (uint8, each below ``2**bits``)."""
    alphabet, n = 1 << bits, symbols.size
    freq = frequencies(symbols, alphabet)
    cdf = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint64)
    lanes = lanes_for(n)
    steps = -(-n // lanes)
    padded = np.full(steps * lanes, np.argmax(freq), dtype=np.int64)
    padded[:n] = symbols
    grid = padded.reshape(steps, lanes)
    f64 = freq.astype(np.uint64)
    x = np.full(lanes, _LOW, dtype=np.uint64)
    emitted = []
    for t in range(steps - 1, -1, -1):
        s = grid[t]
        f, c = f64[s], cdf[s]
        out = x >= (f << np.uint64(32 - PRECISION))
        emitted.append((x[out] & np.uint64(0xFFFF)).astype("<u2"))
        x[out] >>= np.uint64(16)
        x = ((x // f) << np.uint64(PRECISION)) + (x % f) + c
    words = np.concatenate(emitted[::-1]) if emitted else np.zeros(0, dtype="<u2")
    table = b"".join(varint(int(v)) for v in freq)
    return varint(lanes) + table + x.astype("<u4").tobytes() + words.tobytes()


def read_states(reader: ByteReader, lanes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``lanes`` 32-bit coder states and the 16-bit words after them, to the end of the
    reader's payload (ValueError, naming ``what``, for half a word or an invalid state)."""
    x = np.frombuffer(reader.take(4 * lanes), dtype="<u4").astype(np.uint64)
    rest = reader.take(len(reader.data) - reader.pos)
    if len(rest) % 2:
        raise ValueError(f"{what} is truncated (half a word)")
    words = np.frombuffer(rest, dtype="<u2").astype(np.uint64)
    if (x < _LOW).any():
        raise ValueError(f"{what} has an invalid state")
    return x, words


def decode(payload: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` symbols :func:`encode` stored in ``payload`` (ValueError if invalid)."""
    alphabet, reader = 1 << bits, ByteReader(payload, "rANS stream")
    lanes = reader.varint()
    if not 1 <= lanes <= _MAX_LANES or lanes != lanes_for(count):
        raise ValueError(f"rANS stream has {lanes} lanes for {count} symbols")
    counts = [reader.varint() for _ in range(alphabet)]
    if sum(counts) != TOTAL:
        raise ValueError("rANS frequencies do not sum to the total")
    freq = np.array(counts, dtype=np.int64)
    x, words = read_states(reader, lanes, "rANS stream")
    lookup = np.repeat(np.arange(alphabet), freq)
    f64 = freq.astype(np.uint64)
    cdf = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint64)
    steps = -(-count // lanes)
    out = np.empty((steps, lanes), dtype=np.uint8)
    mask, used = np.uint64(TOTAL - 1), 0
    for t in range(steps):
        slot = x & mask
        s = lookup[slot]
        out[t] = s
        x = f64[s] * (x >> np.uint64(PRECISION)) + slot - cdf[s]
        need = np.flatnonzero(x < _LOW)
        if used + need.size > words.size:
            raise ValueError("rANS stream ran out of words")
        x[need] = (x[need] << np.uint64(16)) | words[used : used + need.size]
        used += need.size
    if used != words.size or (x != _LOW).any():
        raise ValueError("rANS stream does not decode to its declared symbols")
    return out.reshape(-1)[:count]
