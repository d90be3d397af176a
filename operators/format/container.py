"""The compact container of format v3: a short binary header, a Brotli-coded index, one
Brotli-coded blob of integer streams, then the other streams (raw floats, rANS streams,
context-coded masks).

Layout (all integers unsigned LEB128 varints, :func:`operators.format.codecs.varint`, unless
said otherwise)::

    b"ACPK"  u8 version (3)  u32 CRC-32 (little-endian) of every byte after it
    index_stored  index_raw          lengths of the index, compressed and plain
    index                            Brotli of the index below
    blob                             Brotli of the in-blob streams' symbols, concatenated
    tail                             the other streams, concatenated

The index, once decompressed::

    head_len  head                   compact JSON: architecture, config, input_shape,
                                     modules, metadata
    blob_stored  blob_raw
    count, then per state-dict entry:
        name_len name  u8 encoding  u8 dtype  ndim dims...  nnz  [block rows cols]
        per stream (1 for ``dense``, 2 otherwise: positions then ``values``):
            u8 code  raw_len  [coded_len, for codes 9-17]  [u8 layout  rows  cols, for 17]

Encodings, streams and their meaning are those of v2 (:mod:`operators.format.checkpoint`);
only the container differs. A stream's bytes, read as a little-endian bit stream, may be cut
into ``w``-bit symbols, one byte each (:func:`split_bits`; ``w = 8``: the bytes themselves).
Its ``code`` says how it is stored: 0 raw in the tail; ``w`` (1-8) as symbols in the blob,
coded by Brotli with the other blob streams; ``8 + w`` (9-16) in the tail as the rANS stream of
its ``w``-bit symbols (:mod:`operators.format.ans`, exact order-0 entropy coding); 17
(:data:`MASK_CODE`, since this release; older files have none) in the tail as the
context-adaptive coding of the ``[rows, cols]`` mask the stream lays out
(:mod:`operators.format.maskcode`; ``layout``: 0 np.packbits, the ``.mask`` and ``.blockmask``
streams; 1 ``pack_indices(., 1)``, 1 + ``w`` the gap codec with ``w``-bit symbols, a clustered
layer's ``positions``; 9 also an ``index`` stream), decoded and laid out again to exactly
``raw_len`` bytes. The writer offers code 17 only for position streams (a sparse entry's
mask, index or block mask; a module's ``positions`` whose args name their encoding) that lay
out their mask again byte for byte, a weight viewed ``[out, rest]``, of at least
:data:`MASK_CODE_MIN_BITS` bits (smaller masks are not worth the coder's time). Float
streams (dense weights, ``values``, codebooks) always go raw, so a dense fp32 file stays the
size of its weights. Each integer stream (bitmasks, gap streams, cluster indices, int8 values,
buffers) takes the smallest of raw, Brotli at every width, rANS at the width of least
estimated size and (position streams) the context-coded mask; the file is also laid out with
no tail-coded stream (as before code 17 existed), and the smaller kept (Brotli
codes the blob's streams together for less than each alone). Brotli beat zstd (level 19) on
every stream and manifest measured here.

Reading checks every declared size before anything is allocated: the index's length is capped
(:data:`MAX_INDEX_BYTES`), each stream's length follows from its entry (a dense tensor is
``numel * itemsize``, a bitmask ``ceil(numel / 8)``, ...), the parts add up to the file's length
exactly, Brotli output is bounded by the declared length, and what the file declares is at
most :data:`MAX_EXPANSION` times its own size plus :data:`EXPANSION_SLACK` (a context-coded
mask counts a byte a bit), and the context-coded masks take at most :data:`MAX_MASK_STEPS`
decoding steps together. The CRC-32 finds
corruption anywhere, the raw float streams included. Any violation, truncation or corruption is
a ValueError; nothing is unpickled.

Measured here (``apply_strategy`` on seed-0 random-init weights, no training; bytes v2 -> v3,
in brackets header + manifest/index and body):

- lenet-300-100, prune 0.98 (layer scope) + cluster 3 bits + float16: 10,599 (2,704 + 7,895)
  -> 7,961 (347 + 7,614); with global pruning 8,232 (2,696 + 5,536) -> 5,742 (340 + 5,402).
- lenet-5, prune 0.95 (layer scope) + cluster 3 bits: 9,256 (4,600 + 4,656) -> 5,000
  (497 + 4,503); global 8,187 (4,608 + 3,579) -> 4,046 (496 + 3,550).
- dense fp32 lenet-300-100: 1,067,648 (1,208 + 1,066,440) -> 1,066,626 (186 + 1,066,440).
- resnet-cifar depth 20, prune 0.9 + cluster 4 bits: 74,291 -> 35,172 (save 1.2-1.5 s ->
  2.9-3.2 s, load 1.0-1.3 s -> 0.2-0.5 s, on this shared 2-core CPU).
- an MLP 64-32-16-10 trained 5 epochs on builtin:digits, prune 0.8 + cluster 3 bits + float16:
  3,336 -> 964.

Context-coded masks, measured here: lenet-300-100 trained 2 epochs on builtin:mnist
(``lr=2e-3``, batch 128, seed 0), prune global + cluster 2 bits + float16: at 0.95 11,358 ->
10,505 bytes (fc1's gap-6 positions, 9,601 bytes: Brotli 6,054, context-coded 5,447, its
order-0 entropy 7,928), at 0.98 5,878 -> 5,626. In fc1 the left and up (28 pixels back)
neighbours carry most of it: their empirical conditional entropy is 5,657 bytes against the
column's 6,678. Coding fc1's 235,200-bit mask took 2.7 s and decoding 1.5 s on this 2-core
machine under a load average of 9 (a 29-element numpy add took 7.5 us there, about 15 times
its unloaded time).

The container's gain is the header and manifest: on random-init weights the cluster-index and
gap streams of the larger layers are within 1-3% of their order-0 byte entropy already, so
entropy coding takes 3-4% off the body there. On skewed symbols it does much more: 3,000
3-bit symbols, 90% zeros (1,125 bytes packed, 247 bytes of entropy), take 342 bytes with
Brotli at its best width and under 270 with rANS (``tests/operators/format/test_container.py``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import numpy as np
import torch

from operators.core.registry import build_module
from operators.format import ans, maskcode
from operators.format.codecs import ByteReader, varint

MAGIC = b"ACPK"
VERSION = 3
MAX_INDEX_BYTES = 16 << 20
MAX_EXPANSION = 1 << 16  # declared bytes per byte of file, beyond the slack
EXPANSION_SLACK = 256 << 20
ENCODING_CODES = ("dense", "bitmask", "index", "block")  # never reorder: codes are stored
DTYPE_CODES = (
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool", "int8",
)  # fmt: skip
_ITEMSIZE = {
    name: torch.empty(0, dtype=getattr(torch, name)).element_size() for name in DTYPE_CODES
}
_POSITIONS = {"bitmask": "mask", "index": "index", "block": "blockmask"}
_HEAD_KEYS = ("architecture", "config", "input_shape", "modules", "metadata")
_TRY_LIMIT = 1 << 20  # integer streams up to this size try every width (larger: bytes only)
MASK_CODE = 17  # a position stream as its context-coded mask (operators.format.maskcode)
MAX_MASK_STEPS = 1 << 18  # decoding steps of a file's context-coded masks, together
#: Masks smaller than this are not offered code 17: its coder has a fixed cost of about a
#: second per file here (LeNet-300-100 with 64 inputs, pruned and clustered, saved in 1.5 s
#: with it, 0.23 s without, for 11 bytes less; the full suite took 985 s with it on every
#: mask); on LeNet-300-100's fc1 (235,200 bits) it takes 4-7% off the file.
MASK_CODE_MIN_BITS = 1 << 16


def is_container(path: Path) -> bool:
    """Whether ``path`` starts with the v3 magic (else it may be a v1/v2 safetensors file)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, PermissionError):
        return False  # the safetensors reader says why it cannot be read


def stream_keys(name: str, entry: dict) -> list[tuple[str, str]]:
    """``(key, dtype)`` of the streams that store state-dict entry ``name``, in stored order."""
    if entry["encoding"] == "dense":
        return [(name, entry["dtype"])]
    return [
        (f"{name}.{_POSITIONS[entry['encoding']]}", "uint8"),
        (f"{name}.values", entry["dtype"]),
    ]


def declared_limit(file_size: int) -> int:
    """The most bytes a file of ``file_size`` bytes may declare (tensors, decoded streams)."""
    return MAX_EXPANSION * file_size + EXPANSION_SLACK


def declared_bytes(entries: dict[str, dict]) -> int:
    """Bytes the loader allocates for manifest ``entries`` (at least 4 per element: float32)."""
    return sum(math.prod(e["shape"]) * max(4, _ITEMSIZE[e["dtype"]]) for e in entries.values())


# -- bit-split transform ----------------------------------------------------------------------


def split_bits(data: bytes, width: int) -> bytes:
    """``data`` as a little-endian bit stream cut into ``width``-bit symbols, one byte each."""
    if width == 8:
        return data
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    bits = np.concatenate([bits, np.zeros(-bits.size % width, dtype=np.uint8)])
    weights = (1 << np.arange(width)).astype(np.uint8)
    return (bits.reshape(-1, width) * weights).sum(axis=1, dtype=np.uint8).tobytes()


def join_bits(symbols: bytes, width: int, length: int) -> bytes:
    """Inverse of :func:`split_bits` for a stream of ``length`` bytes (ValueError if invalid)."""
    if len(symbols) != _split_size(length, width):
        raise ValueError(f"a {width}-bit stream of {length} bytes has the wrong symbol count")
    if width == 8:
        return symbols
    values = np.frombuffer(symbols, dtype=np.uint8)
    if values.size and int(values.max()) >> width:
        raise ValueError(f"a {width}-bit stream holds a symbol of more than {width} bits")
    bits = ((values[:, None] >> np.arange(width, dtype=np.uint8)) & 1).reshape(-1)
    return np.packbits(bits, bitorder="little")[:length].tobytes()


def _split_size(length: int, width: int) -> int:
    return -(-length * 8 // width)


def _brotli(data: bytes) -> bytes:
    return brotli.compress(data, quality=11 if len(data) <= 1 << 20 else 9)


def _in_blob(code: int) -> bool:
    return 1 <= code <= 8


def _choose(
    data: bytes | memoryview, dtype: str, view: tuple[int, int, int] | None = None
) -> tuple[tuple[int, bytes], tuple[int, bytes, bytes] | None]:
    """A stream's ``(code, payload)`` without tail coding and, where it is smaller still, with.

    Without: raw (0, the bytes) for floats and when nothing is smaller, else Brotli at the best
    width (1-8, the payload is the symbols, coded in the blob). With: ``(code, payload,
    descriptor)``, the smaller of rANS at the width of least estimated size (9-16, the payload
    is the rANS stream) and, for a position stream (``view``: its layout, rows and columns),
    its context-coded mask (:data:`MASK_CODE`, descriptor: layout, rows, columns); or None.
    """
    if dtype.startswith(("float", "bfloat")) or not len(data):
        return (0, data), None
    quality = 11 if len(data) <= 1 << 16 else 5
    best, size = (0, data), len(data)
    estimates = {}
    for width in range(1, 9) if len(data) <= _TRY_LIMIT else (8,):
        symbols = split_bits(data, width)
        coded = len(brotli.compress(symbols, quality=quality))
        if coded < size:
            best, size = (width, symbols), coded
        values = np.frombuffer(symbols, dtype=np.uint8)
        table = (1 << width) + np.unique(values).size  # a varint each, 2 bytes when present
        estimates[width] = ans.estimate(values, 1 << width) + table
    width = min(estimates, key=estimates.get)
    options = []
    if estimates[width] < size:
        coded = ans.encode(np.frombuffer(split_bits(data, width), dtype=np.uint8), width)
        options.append((8 + width, coded, b""))
    worth = view is not None and view[1] * view[2] >= MASK_CODE_MIN_BITS
    mask = maskcode.from_stream(bytes(data), *view) if worth else None
    if mask is not None:
        descriptor = bytes([view[0]]) + varint(view[1]) + varint(view[2])
        options.append((MASK_CODE, maskcode.encode(mask), descriptor))
    coded = min(options, key=lambda o: len(o[1]) + len(o[2]), default=None)
    return best, (coded if coded and len(coded[1]) + len(coded[2]) < size else None)


def _mask_views(manifest: dict) -> dict[str, tuple[int, int, int]]:
    """``key -> (layout, rows, cols)`` of the position streams of ``manifest``, each a weight's
    nonzero pattern viewed 2-D ``[out, rest]`` (:mod:`operators.format.maskcode`)."""
    views = {}
    for name, entry in manifest["tensors"].items():
        key = f"{name}.{_POSITIONS.get(entry['encoding'], '')}"
        if entry["encoding"] == "block":
            views[key] = (0, *_block_grid(entry))
        elif entry["encoding"] != "dense":
            views[key] = (0 if entry["encoding"] == "bitmask" else 9, *_matrix(entry["shape"]))
    for module, spec in manifest["modules"].items():
        args = spec.get("args", {}) if isinstance(spec, dict) else {}
        positions = args.get("positions") if isinstance(args, dict) else None
        key = f"{module}.positions"
        if key not in manifest["tensors"] or not isinstance(positions, str):
            continue
        if positions == "bitmask":
            layout = 1
        elif positions[:3] == "gap" and positions[3:] in tuple("12345678"):
            layout = 1 + int(positions[3:])
        else:
            continue
        try:
            with torch.device("meta"):
                shape = list(build_module(args["layer"], args["shape"]).weight.shape)
        except Exception:  # noqa: BLE001 - not a layer this can view; the stream stays as is
            continue
        views[key] = (layout, *_matrix(shape))
    return {k: v for k, v in views.items() if v[1] * v[2]}


def _matrix(shape: list[int]) -> tuple[int, int]:
    """A weight's shape viewed 2-D ``(out, rest)`` (a vector as one row)."""
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _decompress(data: bytes, length: int, what: str) -> bytes:
    """Brotli ``data`` decoded to exactly ``length`` bytes, never producing much more."""
    if length == 0 and not data:
        return b""
    decoder = brotli.Decompressor()
    try:
        out = decoder.process(data, output_buffer_limit=length + 1)
    except brotli.error:
        raise ValueError(f"{what} is corrupt (Brotli)") from None
    if len(out) != length or not decoder.is_finished():
        raise ValueError(f"{what} does not decode to its declared {length} bytes")
    return out


# -- writing ----------------------------------------------------------------------------------


def write_container(path: Path, manifest: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``manifest`` (v2 fields, ``tensors`` entries) and the streams to ``path``.

    Each integer stream takes its smallest coding; as Brotli codes the blob's streams together
    (cheaper than each alone), the file is also laid out without rANS and the smaller is kept.
    """
    head = json.dumps({k: manifest[k] for k in _HEAD_KEYS}, separators=(",", ":"), allow_nan=False)
    entries, table, streams = manifest["tensors"], bytearray(), []
    views, steps_left = _mask_views(manifest), MAX_MASK_STEPS
    for name, entry in entries.items():
        encoded = name.encode()
        table += varint(len(encoded)) + encoded
        table += bytes([ENCODING_CODES.index(entry["encoding"]), DTYPE_CODES.index(entry["dtype"])])
        table += varint(len(entry["shape"])) + b"".join(varint(d) for d in entry["shape"])
        table += varint(entry["nnz"])
        if entry["encoding"] == "block":
            table += b"".join(varint(b) for b in entry["block"])
        for key, dtype in stream_keys(name, entry):
            data = memoryview(tensors[key].contiguous().view(-1).view(torch.uint8).numpy())
            view = views.get(key) if dtype == "uint8" else None
            if view and _mask_steps(view) > steps_left:
                view = None
            plain, alt = _choose(data, dtype, view)
            if alt and alt[0] == MASK_CODE:
                steps_left -= _mask_steps(view)
            streams.append((len(table), len(data), plain, alt))
    layouts = [_layout(head, len(entries), table, [(n, at, plain) for at, n, plain, _ in streams])]
    if any(rans for *_, rans in streams):
        choices = [(n, at, rans or plain) for at, n, plain, rans in streams]
        layouts.append(_layout(head, len(entries), table, choices))
    chunks = min(layouts, key=lambda chunks: sum(len(c) for c in chunks))
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)


def _layout(
    head: str, count: int, table: bytes, streams: list[tuple[int, int, tuple]]
) -> list[bytes]:
    """The file's bytes, in chunks (the raw streams are not copied): ``table`` (the entries)
    with each stream's ``(raw length, position in the table, (code, payload))`` written in."""
    rows, blob, tail, done = bytearray(varint(count)), bytearray(), [], 0
    for length, at, (code, payload, *descriptor) in streams:
        rows += table[done:at] + bytes([code]) + varint(length)
        rows += varint(len(payload)) + b"".join(descriptor) if code > 8 else b""
        if _in_blob(code):
            blob += payload
        else:
            tail.append(payload)
        done = at
    rows += table[done:]
    packed_blob = _brotli(bytes(blob)) if blob else b""
    index = varint(len(head.encode())) + head.encode()
    index += varint(len(packed_blob)) + varint(len(blob)) + rows
    packed_index = _brotli(index)
    rest = [varint(len(packed_index)) + varint(len(index)) + packed_index, packed_blob, *tail]
    crc = 0
    for chunk in rest:
        crc = zlib.crc32(chunk, crc)
    return [MAGIC + bytes([VERSION]) + crc.to_bytes(4, "little"), *rest]


# -- reading ----------------------------------------------------------------------------------


class Container:
    """A v3 file opened for reading: ``manifest`` (v2 fields, no format/version), ``keys()``
    and ``get_tensor(key)`` like a safetensors handle. ValueError for anything invalid."""

    def __init__(self, path: Path) -> None:
        data = Path(path).read_bytes()
        cursor = ByteReader(data, "the file")
        if cursor.take(len(MAGIC)) != MAGIC:
            raise ValueError("no v3 magic")
        version = cursor.u8()
        if version != VERSION:
            raise ValueError(f"unsupported container version {version}; this reads {VERSION}")
        if int.from_bytes(cursor.take(4), "little") != zlib.crc32(memoryview(data)[cursor.pos :]):
            raise ValueError("the file is corrupt or truncated (CRC-32 mismatch)")
        stored, raw = cursor.varint(), cursor.varint()
        if raw > MAX_INDEX_BYTES:
            raise ValueError(f"index declares {raw} bytes (at most {MAX_INDEX_BYTES})")
        index = ByteReader(_decompress(cursor.take(stored), raw, "the index"), "the index")
        try:
            head = json.loads(index.take(index.varint()))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"the index's head is not JSON ({exc})") from None
        if not isinstance(head, dict) or set(head) != set(_HEAD_KEYS):
            raise ValueError(f"the index's head must have exactly {', '.join(_HEAD_KEYS)}")
        blob_stored, blob_raw = index.varint(), index.varint()
        # key -> dtype, code, offset (in the blob or the tail), length, stored length
        self._streams: dict[str, tuple[str, int, int, int, int]] = {}
        self._views: dict[str, tuple[int, int, int]] = {}  # key -> a context-coded mask's view
        entries, blob_size, tail_size, mask_steps, mask_bytes = {}, 0, 0, 0, 0
        for _ in range(index.varint()):
            name, entry = self._read_entry(index)
            if name in entries:
                raise ValueError(f"tensor {name!r} is listed twice")
            entries[name] = entry
            for (key, dtype), (code, length, stored, view) in zip(
                stream_keys(name, entry), self._read_streams(index, name, entry), strict=True
            ):
                if key in self._streams:
                    raise ValueError(f"stream {key!r} is listed twice")
                if view is not None:
                    self._views[key] = view
                    mask_steps += maskcode.steps_for(view[1], view[2])
                    mask_bytes += view[1] * view[2]
                if _in_blob(code):
                    self._streams[key] = (dtype, code, blob_size, length, stored)
                    blob_size += stored
                else:
                    self._streams[key] = (dtype, code, tail_size, length, stored)
                    tail_size += stored
        if index.pos != len(index.data):
            raise ValueError("the index has trailing bytes")
        if mask_steps > MAX_MASK_STEPS:
            raise ValueError(f"the file's masks take {mask_steps} steps (at most {MAX_MASK_STEPS})")
        limit = declared_limit(len(data))
        declared = blob_raw + declared_bytes(entries) + mask_bytes
        if declared > limit:
            raise ValueError(f"the file declares {declared} bytes of tensors, more than {limit}")
        if blob_raw != blob_size:
            raise ValueError(f"the blob declares {blob_raw} bytes, its streams {blob_size}")
        body = cursor.pos + blob_stored + tail_size
        if body != len(data):
            what = "truncated" if body > len(data) else "followed by trailing bytes"
            raise ValueError(f"the file is {what} ({len(data)} bytes, the index says {body})")
        self._blob_stored = cursor.take(blob_stored)
        self._blob: bytes | None = None
        self._tail = memoryview(data)[cursor.pos :]
        self.manifest: dict[str, Any] = {**head, "tensors": entries}

    @staticmethod
    def _read_entry(index: ByteReader) -> tuple[str, dict]:
        try:
            name = index.take(index.varint()).decode()
        except UnicodeDecodeError:
            raise ValueError("a tensor name is not UTF-8") from None
        encoding, dtype = index.u8(), index.u8()
        if encoding >= len(ENCODING_CODES) or dtype >= len(DTYPE_CODES):
            raise ValueError(f"tensor {name!r} has an unknown encoding or dtype code")
        entry: dict[str, Any] = {"encoding": ENCODING_CODES[encoding], "dtype": DTYPE_CODES[dtype]}
        ndim = index.varint()
        if ndim > 32:
            raise ValueError(f"tensor {name!r} has {ndim} dimensions")
        entry["shape"] = [index.varint() for _ in range(ndim)]
        entry["nnz"] = index.varint()
        if entry["encoding"] == "block":
            entry["block"] = [index.varint(), index.varint()]
        return name, entry

    @staticmethod
    def _read_streams(
        index: ByteReader, name: str, entry: dict
    ) -> Iterator[tuple[int, int, int, tuple[int, int, int] | None]]:
        """``(code, length, stored length, view)`` of each stream of ``entry``, each length
        checked against it (the stored length of a blob stream is its symbol count; ``view``:
        ``(layout, rows, cols)`` of a context-coded mask, else None)."""
        numel, itemsize = math.prod(entry["shape"]), _ITEMSIZE[entry["dtype"]]
        for key, dtype in stream_keys(name, entry):
            code, length = index.u8(), index.varint()
            if code > MASK_CODE:
                raise ValueError(f"stream {key!r} has an unknown code {code}")
            stored = index.varint() if code > 8 else length
            view = None
            if code == MASK_CODE:
                view = (index.u8(), index.varint(), index.varint())
                if dtype != "uint8" or view[0] >= maskcode.LAYOUTS or not view[1] * view[2]:
                    raise ValueError(f"stream {key!r} has a bad mask view {view}")
                if view[0] < 2 and length != -(-view[1] * view[2] // 8):
                    raise ValueError(f"stream {key!r} has {length} bytes for its mask {view}")
            if _in_blob(code):
                stored = _split_size(length, code)
            if key == name or key.endswith(".values"):
                if entry["encoding"] == "dense":
                    expected = numel * itemsize
                elif entry["encoding"] == "block":
                    expected = None  # checked against the block mask when decoded
                    if length % itemsize or length > _block_numel(entry) * itemsize:
                        raise ValueError(f"stream {key!r} has {length} bytes for {entry['shape']}")
                else:
                    expected = entry["nnz"] * itemsize
            elif key.endswith(".index"):
                expected = None  # one symbol per nonzero plus escapes: at most numel // 255 more
                if length > entry["nnz"] + numel // 255 + 1:
                    raise ValueError(
                        f"stream {key!r} has {length} bytes for {entry['nnz']} nonzeros"
                    )
            else:
                count = numel if key.endswith(".mask") else _block_numel(entry, grid=True)
                expected = (count + 7) // 8
            if expected is not None and length != expected:
                raise ValueError(f"stream {key!r} has {length} bytes, its entry says {expected}")
            yield code, length, stored, view

    def keys(self) -> set[str]:
        return set(self._streams)

    def get_tensor(self, key: str) -> torch.Tensor:
        """The stream ``key`` as a flat tensor of its dtype (a dense entry in its shape)."""
        dtype, code, offset, length, stored = self._streams[key]
        if _in_blob(code):
            if self._blob is None:
                self._blob = _decompress(
                    self._blob_stored,
                    sum(s[4] for s in self._streams.values() if _in_blob(s[1])),
                    "the stream blob",
                )
            data = join_bits(self._blob[offset : offset + stored], code, length)
        elif code == MASK_CODE:
            layout, rows, cols = self._views[key]
            payload = bytes(self._tail[offset : offset + stored])
            data = maskcode.to_stream(maskcode.decode(payload, rows, cols), layout)
            if len(data) != length:
                raise ValueError(f"stream {key!r}'s mask gives {len(data)} bytes, not {length}")
        elif code:
            width = code - 8
            payload = bytes(self._tail[offset : offset + stored])
            symbols = ans.decode(payload, width, _split_size(length, width)).tobytes()
            data = join_bits(symbols, width, length)
        else:
            data = self._tail[offset : offset + length]
        if dtype == "bool" and data and max(data) > 1:
            raise ValueError(f"stream {key!r} holds a bool that is neither 0 nor 1")
        tensor = (
            torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype))
            if data
            else (torch.zeros(0, dtype=getattr(torch, dtype)))
        )
        entry = self.manifest["tensors"].get(key)
        return tensor.view(entry["shape"]) if entry is not None else tensor

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blob = None


def _block_grid(entry: dict) -> tuple[int, int]:
    """Rows and columns of blocks of a block-encoded weight padded to whole blocks."""
    shape, (rows, cols) = entry["shape"], entry["block"]
    if len(shape) < 2 or rows <= 0 or cols <= 0:
        raise ValueError(f"bad block entry {entry['block']} for shape {shape}")
    return -(-shape[0] // rows), -(-math.prod(shape[1:]) // cols)


def _block_numel(entry: dict, grid: bool = False) -> int:
    """Entries of a block-encoded weight padded to whole blocks (``grid``: blocks)."""
    grid_rows, grid_cols = _block_grid(entry)
    return grid_rows * grid_cols * (1 if grid else math.prod(entry["block"]))


def _mask_steps(view: tuple[int, int, int]) -> int:
    """Decoding steps of a context-coded mask ``(layout, rows, cols)``; beyond the file's
    budget (:data:`MAX_MASK_STEPS`) for a shape :mod:`operators.format.maskcode` refuses."""
    try:
        return maskcode.steps_for(view[1], view[2])
    except ValueError:
        return MAX_MASK_STEPS + 1
