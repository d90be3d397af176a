"""The context-adaptive mask coder: exact round trips on random and structured masks, fewer
bytes than the order-0 entropy where columns and rows differ in density, the position-stream
layouts reproduced byte for byte, and damaged payloads refused with a ValueError."""

import numpy as np
import pytest
import torch

from operators.format import maskcode
from operators.format.codecs import encode_positions


def structured(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A mask like a pruned MNIST fc1: a column density that falls off from the middle (dead
    border columns), each row's density scaled by its own factor."""
    rng = np.random.default_rng(seed)
    middle = np.exp(-(((np.arange(cols) - cols / 2) / (cols / 6)) ** 2))
    density = np.clip(0.15 * np.outer(rng.uniform(0.3, 1.7, rows), middle), 0, 1)
    return rng.random((rows, cols)) < density


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    one_column = np.zeros((40, 30), dtype=bool)
    one_column[:, 7] = True
    cases = {
        "empty": np.zeros((50, 60), dtype=bool),
        "full": np.ones((50, 60), dtype=bool),
        "one dense column": one_column,
        "one dense row": one_column.T.copy(),
        "single bit": np.eye(1, 1000, 999, dtype=bool),
        "a column vector": rng.random((3000, 1)) < 0.1,
        "structured fc1": structured(300, 784),
    }
    for density in (0.01, 0.05, 0.3, 0.9):
        cases[f"random {density}"] = rng.random((100, 300)) < density
    return cases


@pytest.mark.parametrize("case", list(masks()))
def test_round_trip_is_exact(case):
    mask = masks()[case]
    payload = maskcode.encode(mask)
    assert np.array_equal(maskcode.decode(payload, *mask.shape), mask)


def test_structured_masks_cost_less_than_their_order0_entropy():
    mask = structured(300, 784)
    payload = maskcode.encode(mask)
    assert len(payload) < 0.9 * maskcode.estimate_bits(mask) / 8
    noise = np.random.default_rng(2).random((300, 784)) < 0.05  # no structure: about the same
    assert len(maskcode.encode(noise)) < 1.05 * maskcode.estimate_bits(noise) / 8 + 4 * 29


def test_constant_masks_cost_next_to_nothing():
    for mask in (np.zeros((300, 784), dtype=bool), np.ones((300, 784), dtype=bool)):
        assert len(maskcode.encode(mask)) < 4 * maskcode.lanes_for(300, 784) + 80


def test_every_layout_reproduces_the_stream_bytes():
    mask = structured(30, 70)
    for layout in range(maskcode.LAYOUTS):
        stream = maskcode.to_stream(mask, layout)
        back = maskcode.from_stream(stream, layout, 30, 70)
        assert back is not None and maskcode.to_stream(back, layout) == stream
    encoding, _, packed = encode_positions(torch.from_numpy(mask.reshape(-1)))
    layout = 1 if encoding == "bitmask" else 1 + int(encoding[3:])
    assert np.array_equal(maskcode.from_stream(packed.numpy().tobytes(), layout, 30, 70), mask)


def test_streams_no_mask_gives_are_not_viewed_as_masks():
    stream = maskcode.to_stream(structured(30, 70), 9)
    assert maskcode.from_stream(stream, 0, 30, 70) is None  # the wrong length for a bitmask
    assert maskcode.from_stream(b"\xff", 0, 1, 4) is None  # set bits in the padding
    assert maskcode.from_stream(stream, 9, 3, 7) is None  # positions beyond the weight
    assert maskcode.from_stream(b"\xff", 9, 10, 10) is None  # ends inside an escape


def test_damaged_payloads_are_refused():
    mask = structured(100, 300)
    payload = maskcode.encode(mask)
    damaged = {
        "empty": b"",
        "truncated states": payload[:10],
        "half a word": payload[:-1],
        "truncated": payload[:-2],
        "extra words": payload + b"\1\0",
        "flipped state": payload[:2] + bytes([payload[2] ^ 0x10]) + payload[3:],
        "state below the range": b"\0\0\0\0" + payload[4:],
    }
    for why, bad in damaged.items():
        with pytest.raises(ValueError, match="context-coded mask"):
            assert np.array_equal(maskcode.decode(bad, 100, 300), mask), why


def test_shapes_that_take_too_many_steps_are_refused():
    assert maskcode.steps_for(300, 784) == 11 * 784  # 29 lanes: 11 blocks of rows
    with pytest.raises(ValueError, match="too many steps"):
        maskcode.decode(b"\0" * 8, 1, maskcode.MAX_STEPS + 1)
    with pytest.raises(ValueError, match="too many steps"):
        maskcode.encode(np.zeros((1, maskcode.MAX_STEPS + 1), dtype=bool))
