"""The rANS coder: exact round trips at every width and size, near the order-0 entropy, and
damaged payloads refused with a ValueError."""

import numpy as np
import pytest

from operators.format import ans
from operators.format.codecs import varint


def skewed(n: int, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.8, 0, rng.integers(0, 1 << bits, n)).astype(np.uint8)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 5000, 300_000])  # 1 lane up to 292 lanes
def test_round_trip_is_exact_and_near_the_entropy(bits, n):
    symbols = skewed(n, bits, seed=bits)
    payload = ans.encode(symbols, bits)
    assert np.array_equal(ans.decode(payload, bits, n), symbols)
    overhead = 1 + 2 * (1 << bits) + 4 * ans.lanes_for(n) + 2  # lanes, table, states, a word
    assert len(payload) <= ans.estimate(symbols, 1 << bits) * 1.01 + overhead


def test_a_constant_stream_costs_only_its_table_and_states():
    payload = ans.encode(np.full(10_000, 5, dtype=np.uint8), 3)
    assert len(payload) == 1 + 9 + 4 * ans.lanes_for(10_000)  # lanes, 8 frequencies, states
    assert np.array_equal(ans.decode(payload, 3, 10_000), np.full(10_000, 5))


def test_damaged_payloads_are_refused():
    symbols = skewed(5000, 3)
    payload = ans.encode(symbols, 3)
    damaged = {
        "truncated": payload[:-2],
        "truncated table": payload[:3],
        "extra words": payload + b"\0\0",
        "flipped state": payload[:20] + bytes([payload[20] ^ 0x10]) + payload[21:],
        "flipped word": payload[:-1] + bytes([payload[-1] ^ 0x01]),
        "huge frequency": payload[:1] + varint(1 << 64) + payload[2:],
    }
    for why, bad in damaged.items():
        with pytest.raises(ValueError, match="rANS"):
            decoded = ans.decode(bad, 3, 5000)
            assert np.array_equal(decoded, symbols), why  # a flip may still decode, but not here
    with pytest.raises(ValueError, match="lanes"):
        ans.decode(payload, 3, 500_000)  # another count needs another number of lanes
