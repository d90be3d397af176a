"""Format v3, the compact container: every module kind round-trips as in v2, in fewer bytes,
and hostile or damaged files are refused with a ValueError before anything is allocated."""

import json
import zlib

import numpy as np
import pytest
import torch
from test_checkpoint import assert_bit_exact

from operators.core.registry import MODULE_KINDS
from operators.core.strategy import apply_strategy
from operators.format import container, maskcode
from operators.format.checkpoint import (
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    save_dense_checkpoint,
)
from operators.format.codecs import encode_gaps, pack_indices, varint
from operators.models.zoo import build_model

MLP = ("mlp", {"in_features": 64, "hidden": [48, 32], "num_classes": 10}, (64,))
LENET5 = ("lenet-5", {"image_size": 16}, (1, 16, 16))
VGG = ("vgg-cifar", {"width": 0.125}, (3, 32, 32))
# ((architecture, config, input shape), steps, module kinds the checkpoint must record)
KIND_CASES = {
    "clustered-fp16": (
        MLP,
        [{"op": "prune", "sparsity": 0.8}, {"op": "cluster", "bits": 3},
         {"op": "quantize", "dtype": "float16"}],
        {"clustered"},
    ),
    "mpd-int8": (
        MLP,
        [{"op": "mpd", "blocks": 4, "include": "fc1"},
         {"op": "quantize", "dtype": "int8", "include": "fc2"}],
        {"mpd_linear", "int8"},
    ),
    "neuron-unify": (
        MLP,
        [{"op": "neuron_prune", "ratio": 0.5},
         {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.25,
          "include": "fc1"}],
        {"linear", "unified"},
    ),
    "lowrank": (MLP, [{"op": "lowrank", "rank": 4}], {"lowrank"}),
    "block-bf16": (
        MLP,
        [{"op": "block_prune", "sparsity": 0.6, "block": [2, 4]},
         {"op": "quantize", "dtype": "bfloat16"}],
        set(),
    ),
    "filter-mpd-conv": (
        LENET5,
        [{"op": "filter_prune", "ratio": 0.5, "include": "conv1"},
         {"op": "mpd", "blocks": 2, "include": "conv2"}],
        {"conv2d", "mpd_conv2d"},
    ),
    "filter-batchnorm": (VGG, [{"op": "filter_prune", "ratio": 0.5}], {"conv2d", "batchnorm2d"}),
}  # fmt: skip


def save(cm, path, arch, version=3):
    return save_checkpoint(
        cm,
        path,
        architecture=arch[0],
        config=arch[1],
        metadata={"trial": 1},
        format_version=version,
    )


def test_the_cases_cover_every_module_kind():
    covered = set().union(*(kinds for _, _, kinds in KIND_CASES.values()))
    # no zoo model has a BatchNorm1d
    assert covered >= set(MODULE_KINDS) - {"batchnorm1d"}


@pytest.mark.parametrize("case", KIND_CASES)
def test_v3_round_trips_every_kind_as_v2_does_in_fewer_bytes(tmp_path, case):
    arch, steps, kinds = KIND_CASES[case]
    torch.manual_seed(0)
    cm = apply_strategy(build_model(*arch[:2]), steps)
    sizes, loaded = {}, {}
    for version in (2, 3):
        path = tmp_path / f"v{version}.bin"
        sizes[version] = save(cm, path, arch, version)
        assert sizes[version] == path.stat().st_size
        loaded[version] = load_checkpoint(path, runtime="dense")
    (v2, manifest2), (v3, manifest3) = loaded[2], loaded[3]
    assert manifest3 == {**manifest2, "version": 3}
    assert {m["kind"] for m in manifest3["modules"].values()} >= kinds
    assert_bit_exact(v3, v2)
    x = torch.randn(5, *arch[2])
    packed, _ = load_checkpoint(tmp_path / "v3.bin", runtime="packed")
    with torch.no_grad():
        torch.testing.assert_close(packed(x), v2(x), rtol=1e-5, atol=1e-6)
    assert sizes[3] < sizes[2]


def test_v3_is_much_smaller_on_a_pruned_clustered_lenet_and_no_bigger_dense(lenet, tmp_path):
    arch = ("lenet-300-100", {})
    steps = [{"op": "prune", "sparsity": 0.98, "scope": "layer"}, {"op": "cluster", "bits": 3},
             {"op": "quantize", "dtype": "float16"}]  # fmt: skip
    cm = apply_strategy(lenet, steps)
    v2, v3 = (save(cm, tmp_path / f"p{v}.bin", arch, v) for v in (2, 3))
    assert v3 < 0.8 * v2 and v2 - v3 > 2000  # the safetensors header and JSON manifest shrink
    dense = {
        v: save_dense_checkpoint(
            lenet, tmp_path / f"d{v}.bin", architecture=arch[0], config={}, format_version=v
        )
        for v in (2, 3)
    }
    assert dense[3] <= dense[2] + 8
    assert_bit_exact(load_checkpoint(tmp_path / "d3.bin", runtime="dense")[0], lenet)


def test_the_version_is_chosen_by_the_writer_and_detected_by_the_reader(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}])
    arch = ("lenet-300-100", {})
    save_checkpoint(cm, tmp_path / "default.bin", architecture=arch[0], config={})
    assert (tmp_path / "default.bin").read_bytes()[:5] == b"ACPK\x03"
    assert read_manifest(tmp_path / "default.bin")["version"] == 3
    save(cm, tmp_path / "v2.bin", arch, 2)
    assert read_manifest(tmp_path / "v2.bin")["version"] == 2
    with pytest.raises(ValueError, match="format_version: must be one of"):
        save(cm, tmp_path / "v4.bin", arch, 4)


def test_integer_streams_take_their_smallest_coding():
    noise = bytes(
        torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    )
    skewed = bytes([0] * 900 + list(range(100)))
    assert container._choose(skewed, "uint8")[0][0] != 0
    assert container._choose(bytes(range(256)) * 2, "float16") == ((0, bytes(range(256)) * 2), None)
    assert container._choose(noise, "uint8") == ((0, noise), None)  # nothing is smaller than raw
    lz, rans = container._choose(bytes(range(256)) * 8, "uint8")
    assert 1 <= lz[0] <= 8 and rans is None  # a repetition: Brotli's LZ wins, order 0 cannot
    for width in range(1, 9):
        data = noise[: 100 + width]
        symbols = container.split_bits(data, width)
        assert max(symbols) < 2**width
        assert container.join_bits(symbols, width, len(data)) == data


# -- hostile and damaged files ----------------------------------------------------------------


@pytest.fixture
def good(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.95}, {"op": "cluster", "bits": 2}])
    path = tmp_path / "good.bin"
    save(cm, path, ("lenet-300-100", {}))
    return path


def refused(path, match="not a valid autocompress checkpoint"):
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path)


def framed(rest: bytes, version: int = 3) -> bytes:
    """A v3 file's bytes around ``rest`` (everything after the CRC), with a correct CRC."""
    return b"ACPK" + bytes([version]) + zlib.crc32(rest).to_bytes(4, "little") + rest


def test_truncated_extended_and_corrupted_files_are_refused(good, tmp_path):
    data = good.read_bytes()
    bad = tmp_path / "bad.bin"
    for cut in sorted({0, 3, 5, 8, 9, 10, 20, len(data) // 2, len(data) - 1}):
        bad.write_bytes(data[:cut])
        refused(bad)
    bad.write_bytes(data + b"\0")
    refused(bad, "CRC-32 mismatch")
    for position in (12, len(data) // 2, len(data) - 1):  # index, blob, raw float tail
        flipped = bytearray(data)
        flipped[position] ^= 0x40
        bad.write_bytes(bytes(flipped))
        refused(bad, "CRC-32 mismatch")
    rest = data[9:]
    bad.write_bytes(framed(rest + b"\0"))  # a consistent CRC, but bytes the index does not list
    refused(bad, "trailing bytes")
    bad.write_bytes(framed(rest[:-1]))
    refused(bad, "truncated")


def test_bad_magic_and_versions_are_refused(good, tmp_path):
    data = good.read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"ACPX" + data[4:])
    refused(bad, "cannot read as safetensors")
    for version in (0, 2, 4, 255):
        bad.write_bytes(framed(data[9:], version))
        refused(bad, f"unsupported container version {version}")


def test_huge_declared_sizes_are_refused_before_allocation(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(framed(varint(30) + varint(1 << 40) + b"\0" * 30))
    refused(bad, "index declares 1099511627776 bytes")  # a Brotli bomb as the index

    head = {"architecture": "lenet-300-100", "config": {}, "input_shape": None, "modules": {},
            "metadata": {}}  # fmt: skip
    entries = {"fc1.weight": {"encoding": "index", "shape": [1 << 30, 1 << 20],
                              "dtype": "float32", "nnz": 0}}  # fmt: skip
    empty = {"fc1.weight.index": torch.zeros(0, dtype=torch.uint8),
             "fc1.weight.values": torch.zeros(0)}  # fmt: skip
    container.write_container(bad, {**head, "tensors": entries}, empty)
    refused(bad, r"declares 4503599627370496 bytes of tensors")

    lying = {"fc1.weight": {"encoding": "dense", "shape": [300, 784], "dtype": "float32", "nnz": 1}}
    container.write_container(bad, {**head, "tensors": lying}, {"fc1.weight": torch.ones(10)})
    refused(bad, "'fc1.weight' has 40 bytes, its entry says 940800")


def test_a_v2_file_declaring_more_than_it_could_hold_is_refused(tmp_path):
    from safetensors.torch import save_file

    manifest = {"format": "autocompress-packed", "version": 2, "architecture": "mlp",
                "config": {"hidden": [1 << 20]}, "modules": {},
                "tensors": {"fc1.weight": {"encoding": "index", "shape": [1 << 20, 1 << 20],
                                           "dtype": "float32", "nnz": 0}}}  # fmt: skip
    path = tmp_path / "v2.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"autocompress": json.dumps(manifest)})
    refused(path, "declares 4398046511104 bytes of tensors")


def one_stream_file(path, stream: torch.Tensor) -> container.Container:
    head = {"architecture": "mlp", "config": {}, "input_shape": None, "modules": {}, "metadata": {}}
    entry = {"encoding": "dense", "shape": [stream.numel()], "dtype": "uint8", "nnz": 0}
    container.write_container(path, {**head, "tensors": {"s": entry}}, {"s": stream})
    return container.Container(path)


def damage(path, position: int) -> None:
    """Flip a byte of ``path`` and give it a correct CRC again (damage the CRC cannot see)."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(framed(bytes(data[9:])))


def test_skewed_symbol_streams_are_rans_coded_near_their_entropy(tmp_path):
    g = torch.Generator().manual_seed(0)
    symbols = torch.where(
        torch.rand(3000, generator=g) < 0.9, 0, torch.randint(0, 8, (3000,), generator=g)
    )
    stream = pack_indices(symbols, 3)  # 3-bit symbols, mostly 0: 1,125 bytes, entropy 247
    path = tmp_path / "c.bin"
    reader = one_stream_file(path, stream)
    assert reader._streams["s"][1] == 8 + 3  # rANS over 3-bit symbols
    assert reader._streams["s"][4] < 270 < 342  # Brotli's best width gives 342 bytes
    assert torch.equal(reader.get_tensor("s"), stream)
    damage(path, path.stat().st_size - 5)
    with pytest.raises(ValueError, match="rANS"):
        container.Container(path).get_tensor("s")


def test_a_damaged_blob_is_refused(tmp_path):
    path = tmp_path / "c.bin"
    stream = torch.arange(256, dtype=torch.uint8).repeat(8)
    reader = one_stream_file(path, stream)
    assert 1 <= reader._streams["s"][1] <= 8 and torch.equal(reader.get_tensor("s"), stream)
    damage(path, path.stat().st_size - 3)  # the blob is the end of this file
    with pytest.raises(ValueError, match="stream blob"):
        container.Container(path).get_tensor("s")


# -- context-coded masks ----------------------------------------------------------------------


def pixel_structured(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (lenet-300-100) with fc1's columns scaled like an MNIST-trained one's: the
    border pixels' weights tiny (pruned first), the middle ones' kept."""
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((yy - 13.5) ** 2 + (xx - 13.5) ** 2) / 40).reshape(-1)
    with torch.no_grad():
        model.fc1.weight.mul_(blob)
    return model


def test_pruned_masks_are_context_coded_smaller_and_exact(lenet, tmp_path, monkeypatch):
    cm = apply_strategy(
        pixel_structured(lenet),
        [{"op": "prune", "sparsity": 0.95, "scope": "layer"}, {"op": "cluster", "bits": 2}],
    )
    arch = ("lenet-300-100", {})
    size = save(cm, tmp_path / "ctx.bin", arch)
    reader = container.Container(tmp_path / "ctx.bin")
    assert reader._streams["fc1.positions"][1] == container.MASK_CODE
    assert reader._views["fc1.positions"][1:] == (300, 784)
    monkeypatch.setattr(container, "_mask_views", lambda manifest: {})
    without = save(cm, tmp_path / "plain.bin", arch)
    assert size < 0.95 * without
    plain = container.Container(tmp_path / "plain.bin")
    for key in reader.keys():
        assert torch.equal(reader.get_tensor(key), plain.get_tensor(key)), key
    assert_bit_exact(load_checkpoint(tmp_path / "ctx.bin", runtime="dense")[0],
                     load_checkpoint(tmp_path / "plain.bin", runtime="dense")[0])  # fmt: skip


@pytest.mark.parametrize("encoding", ["bitmask", "index"])
def test_sparse_entries_masks_are_context_coded(tmp_path, encoding):
    # 240 x 300 bits: above container.MASK_CODE_MIN_BITS, so code 17 is offered
    density = torch.full((300,), 0.01)
    density[100:140] = 0.9  # dense columns, misaligned with the bytes (300 bits a row)
    mask = torch.rand(240, 300, generator=torch.Generator().manual_seed(0)) < density
    flat = mask.reshape(-1).numpy()
    stream = (
        torch.from_numpy(np.packbits(flat))
        if encoding == "bitmask"
        else encode_gaps(np.flatnonzero(flat))[0]
    )
    key = f"w.{'mask' if encoding == 'bitmask' else 'index'}"
    head = {"architecture": "mlp", "config": {}, "input_shape": None, "modules": {}, "metadata": {}}
    entry = {"encoding": encoding, "shape": [240, 300], "dtype": "float16", "nnz": int(flat.sum())}
    values = torch.ones(int(flat.sum()), dtype=torch.float16)
    path = tmp_path / "w.bin"
    container.write_container(
        path, {**head, "tensors": {"w": entry}}, {key: stream, "w.values": values}
    )
    reader = container.Container(path)
    assert reader._streams[key][1] == container.MASK_CODE
    assert torch.equal(reader.get_tensor(key), stream)


def lying_file(path, monkeypatch, view: tuple[int, int, int], payload: bytes | None = None):
    """A file whose stream ``s`` claims to be a context-coded mask viewed ``view``."""
    real = maskcode.encode(np.ones((1, 8), dtype=bool))
    monkeypatch.setattr(container, "MASK_CODE_MIN_BITS", 0)  # tiny as it is, code 17 is offered
    monkeypatch.setattr(container, "_mask_views", lambda manifest: {"s": view})
    monkeypatch.setattr(container, "_mask_steps", lambda view: 0)
    monkeypatch.setattr(maskcode, "from_stream", lambda *args: np.ones((1, 8), dtype=bool))
    monkeypatch.setattr(maskcode, "encode", lambda mask: real if payload is None else payload)
    try:
        noise = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0))
        return one_stream_file(path, noise.to(torch.uint8))  # nothing codes it smaller
    finally:
        monkeypatch.undo()


def test_hostile_context_coded_masks_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "m.bin"
    with pytest.raises(ValueError, match="too many steps"):
        lying_file(path, monkeypatch, (2, 1, 1 << 20))
    with pytest.raises(ValueError, match="bytes of tensors"):
        lying_file(path, monkeypatch, (2, 1 << 16, 1 << 16))  # 4 Gbit for a tiny file
    with pytest.raises(ValueError, match="bad mask view"):
        lying_file(path, monkeypatch, (maskcode.LAYOUTS, 1, 8))
    with pytest.raises(ValueError, match="bytes for its mask"):
        lying_file(path, monkeypatch, (0, 1, 8))  # a bitmask of 8 bits is 1 byte, not 64
    reader = lying_file(path, monkeypatch, (9, 1, 8))  # decodes, to the wrong stream
    with pytest.raises(ValueError, match="gives 8 bytes, not 64"):
        reader.get_tensor("s")
    reader = lying_file(path, monkeypatch, (9, 1, 8), payload=b"\0\1\2")  # truncated payload
    with pytest.raises(ValueError, match="context-coded mask"):
        reader.get_tensor("s")
