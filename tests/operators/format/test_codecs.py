"""The byte codecs: bit packing, the gap codec, position streams (the smallest wins) and the
block view, each round-tripping exactly."""

import numpy as np
import pytest
import torch

from operators.format.codecs import (
    block_view,
    decode_gaps,
    decode_positions,
    encode_gaps,
    encode_positions,
    nonzero_bits,
    pack_indices,
    position_bytes,
    unpack_indices,
)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip(bits):
    n = 1001
    idx = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits))
    packed = pack_indices(idx, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (n * bits + 7) // 8
    assert torch.equal(unpack_indices(packed, bits, n), idx)


def test_bits_are_packed_little_endian():
    assert pack_indices(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]
    assert pack_indices(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]


def test_pack_rejects_out_of_range_values():
    with pytest.raises(ValueError, match="indices"):
        pack_indices(torch.tensor([4]), 2)


@pytest.mark.parametrize(
    "positions", [[], [0], [5], [0, 1, 2], [254], [255], [300, 301, 1000, 70000], [509, 510, 765]]
)
def test_gap_codec_round_trips(positions):
    positions = np.array(positions, dtype=np.int64)
    assert np.array_equal(decode_gaps(encode_gaps(positions)[0]), positions)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_gap_codec_random(bits):
    rng = np.random.default_rng(bits)
    positions = np.flatnonzero(rng.random(200_000) < 0.01)
    packed, symbols = encode_gaps(positions, bits)
    assert np.array_equal(decode_gaps(packed, bits, symbols), positions)


def test_gap_symbols_escape_long_gaps():
    packed, symbols = encode_gaps(np.array([3, 4, 600]), 8)  # gaps 3, 0, 595 = 255 + 255 + 85
    assert symbols == 5 and packed.tolist() == [3, 0, 255, 255, 85]
    with pytest.raises(ValueError, match="ends inside an escape sequence"):
        decode_gaps(torch.tensor([3, 255], dtype=torch.uint8))


@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.9, 1.0])
def test_position_codecs_round_trip_in_the_smallest_encoding(density):
    g = torch.Generator().manual_seed(1)
    pattern = torch.rand(1000, generator=g) < density
    encoding, symbols, packed = encode_positions(pattern)
    assert torch.equal(decode_positions(encoding, symbols, packed, 1000), pattern)
    assert packed.numel() == position_bytes(encoding, symbols, 1000) <= 125  # the bitmask
    if density == 1.0:
        assert encoding == "all"
    elif density <= 0.01:
        assert encoding.startswith("gap") and packed.numel() < 125


def test_bad_position_streams_are_refused():
    with pytest.raises(ValueError, match="unknown position encoding 'rle'"):
        decode_positions("rle", 0, torch.zeros(0, dtype=torch.uint8), 10)
    packed, symbols = encode_gaps(np.array([2, 12]), 8)
    with pytest.raises(ValueError, match="points outside the weight"):
        decode_positions("gap8", symbols, packed, 10)


def test_negative_zero_has_nonzero_bits():
    assert nonzero_bits(torch.tensor([0.0, -0.0, 1.0])).tolist() == [False, True, True]
    assert nonzero_bits(torch.tensor([0, 2], dtype=torch.int8)).tolist() == [False, True]


def test_block_view_pads_and_tiles_the_2d_weight():
    w = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)  # viewed 2 x 15
    view = block_view(w, (2, 4))
    assert view.shape == (1, 4, 2, 4)
    assert torch.equal(view[0, 1], w.reshape(2, 15)[:, 4:8])
    assert torch.equal(view[0, 3, :, :3], w.reshape(2, 15)[:, 12:]) and not view[0, 3, :, 3:].any()
