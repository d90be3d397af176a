"""The packed checkpoint: one safetensors file a user downloads and loads without pickle.

The file's string metadata holds, under the key ``"autocompress"``, a compact JSON manifest::

    {"format": "autocompress-packed", "version": 1,
     "architecture": "lenet-300-100", "config": {...},
     "tensors": {"fc1.weight": {"encoding": "index", "shape": [300, 784],
                                "dtype": "float16", "nnz": 11760}, ...},
     "metadata": {...}}

Each state-dict entry (parameter or buffer) is stored with one encoding, the smallest for it:

``dense``    the tensor itself, under its own name, in its storage dtype.
``bitmask``  ``<name>.mask``: ``np.packbits`` of the flattened nonzero pattern (uint8, big bit
             order, ``ceil(numel / 8)`` bytes), and ``<name>.values``: the nonzeros in order.
``index``    ``<name>.index``: the nonzero positions as uint8 gaps with escape, and
             ``<name>.values``. Gap ``g_i = pos_i - pos_{i-1} - 1`` (``pos_{-1} = -1``) is
             written as ``g_i // 255`` bytes of 255 followed by one byte ``g_i % 255``.

"Nonzero" is bitwise (``-0.0`` is kept as a value), so a round trip is bit-exact. Storage
dtype is float32 unless an op chose another one (``quantize``); buffers are always dense in
their own dtype. The loader rebuilds the module with :func:`operators.zoo.build_model` and
fills the weights; anything inconsistent in the file is a ValueError.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from operators.strategy import CompressedModel
from operators.zoo import build_model

MANIFEST_KEY = "autocompress"
FORMAT = "autocompress-packed"
VERSION = 1
ENCODINGS = ("dense", "bitmask", "index")
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_SAME_WIDTH_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_ENTRY_OVERHEAD = 64  # approximate bytes of safetensors header per stored tensor
_ESCAPE = 255


# -- position codecs --------------------------------------------------------------------------


def encode_gaps(positions: np.ndarray) -> np.ndarray:
    """Sorted positions -> uint8 gap stream with escape (see the module docstring)."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    lengths = gaps // _ESCAPE + 1
    stream = np.full(int(lengths.sum()), _ESCAPE, dtype=np.uint8)
    stream[np.cumsum(lengths) - 1] = gaps % _ESCAPE
    return stream


def decode_gaps(stream: np.ndarray) -> np.ndarray:
    """uint8 gap stream -> int64 positions (inverse of :func:`encode_gaps`)."""
    if stream.size and stream[-1] == _ESCAPE:
        raise ValueError("index stream ends inside an escape sequence")
    ends = np.flatnonzero(stream != _ESCAPE)
    return np.cumsum(stream, dtype=np.int64)[ends] + np.arange(ends.size)


def _nonzero_bits(flat: torch.Tensor) -> torch.Tensor:
    """Bool mask of entries whose bit pattern is not all zero (so -0.0 counts as nonzero)."""
    if flat.is_floating_point():
        return flat.view(_SAME_WIDTH_INT[flat.element_size()]) != 0
    return flat != 0


# -- encoding ---------------------------------------------------------------------------------


def candidate_encodings(
    name: str, tensor: torch.Tensor, storage: torch.dtype
) -> dict[str, dict[str, torch.Tensor]]:
    """Every encoding of ``tensor`` (already projected, CPU) as the tensors it would store."""
    values = tensor.to(storage).contiguous()
    flat = tensor.flatten()
    nonzero = _nonzero_bits(flat)
    packed_values = values.flatten()[nonzero]
    mask_bytes = np.packbits(nonzero.numpy())
    positions = np.flatnonzero(nonzero.numpy())
    return {
        "dense": {name: values},
        "bitmask": {f"{name}.mask": torch.from_numpy(mask_bytes), f"{name}.values": packed_values},
        "index": {
            f"{name}.index": torch.from_numpy(encode_gaps(positions)),
            f"{name}.values": packed_values,
        },
    }


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Approximate file bytes of storing ``tensors``: data plus per-entry header overhead."""
    return sum(t.numel() * t.element_size() + _ENTRY_OVERHEAD for t in tensors.values())


def _encode(
    name: str, tensor: torch.Tensor, storage: torch.dtype, allow_sparse: bool
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest entry, tensors to store) for one state-dict entry, smallest encoding first."""
    tensor = tensor.detach().cpu()
    if allow_sparse and tensor.is_floating_point() and tensor.numel():
        candidates = candidate_encodings(name, tensor, storage)
        encoding = min(candidates, key=lambda e: stored_bytes(candidates[e]))
        stored = candidates[encoding]
    else:
        encoding, stored = "dense", {name: tensor.to(storage).contiguous().clone()}
    entry = {
        "encoding": encoding,
        "shape": list(tensor.shape),
        "dtype": _dtype_name(storage),
        "nnz": int(_nonzero_bits(tensor.flatten()).sum()),
    }
    return entry, stored


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype} cannot be stored; allowed: {', '.join(DTYPES)}")
    return _DTYPE_NAMES[dtype]


def _mismatched_tensors(
    architecture: str, config: dict, shapes: dict[str, Sequence[int]]
) -> list[str]:
    """State-dict names whose presence or shape differ between ``shapes`` and the architecture.

    The model is built on the meta device: nothing is allocated or initialised.
    """
    with torch.device("meta"):
        expected = {
            k: tuple(v.shape) for k, v in build_model(architecture, config).state_dict().items()
        }
    return sorted(
        name
        for name in expected.keys() | shapes.keys()
        if name not in expected or name not in shapes or tuple(shapes[name]) != expected[name]
    )


def _write(
    cm: CompressedModel,
    path: Path,
    architecture: str,
    config: dict,
    metadata: dict | None,
    allow_sparse: bool,
) -> int:
    state = cm.model.state_dict()
    mismatch = _mismatched_tensors(architecture, config, {k: v.shape for k, v in state.items()})
    if mismatch:
        raise ValueError(
            f"model does not match {architecture} with config {config}: "
            f"differs in {', '.join(mismatch)}"
        )
    params = dict(cm.model.named_parameters())
    entries, tensors = {}, {}
    for name, tensor in state.items():
        if name in params:
            tensor, storage = cm.project(name, tensor), cm.storage_dtype(name)
        else:
            storage = tensor.dtype
        entries[name], stored = _encode(name, tensor, storage, allow_sparse and name in params)
        tensors.update(stored)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture,
        "config": config,
        "tensors": entries,
        "metadata": metadata or {},
    }
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config and metadata must be JSON-serialisable: {exc}") from None
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={MANIFEST_KEY: text})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def save_checkpoint(
    cm: CompressedModel,
    path: Path,
    *,
    architecture: str,
    config: dict,
    metadata: dict | None = None,
) -> int:
    """Write ``cm`` packed (sparse where smaller, storage dtypes) to ``path``; return its size.

    The weights written are ``cm``'s projection (what :meth:`CompressedModel.enforce` gives);
    ``cm`` itself is not modified.
    """
    return _write(cm, path, architecture, config, metadata, allow_sparse=True)


def save_dense_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    architecture: str,
    config: dict,
    metadata: dict | None = None,
) -> int:
    """Write ``model`` as plain dense tensors in the same format (the baseline); return its size."""
    return _write(CompressedModel(model), path, architecture, config, metadata, allow_sparse=False)


# -- loading ----------------------------------------------------------------------------------


def _invalid(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a valid autocompress checkpoint: {why}")


def _check_manifest(manifest: Any, path: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid(path, f"manifest 'format' must be {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise _invalid(
            path, f"unsupported version {manifest.get('version')!r}; this reads {VERSION}"
        )
    if not isinstance(manifest.get("architecture"), str):
        raise _invalid(path, "manifest 'architecture' must be a string")
    if not isinstance(manifest.get("config"), dict):
        raise _invalid(path, "manifest 'config' must be an object")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise _invalid(path, "manifest 'metadata' must be an object")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise _invalid(path, "manifest 'tensors' must be an object")
    for name, entry in tensors.items():
        ok = (
            isinstance(entry, dict)
            and entry.get("encoding") in ENCODINGS
            and entry.get("dtype") in DTYPES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("nnz"), int)
        )
        if not ok:
            raise _invalid(path, f"bad manifest entry for tensor {name!r}")
    return manifest


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise _invalid(path, f"cannot read as safetensors ({exc})") from None


def read_manifest(path: Path) -> dict:
    """The validated JSON manifest of a packed checkpoint (ValueError if missing or invalid)."""
    path = Path(path)
    with _open(path) as f:
        text = (f.metadata() or {}).get(MANIFEST_KEY)
    if text is None:
        raise _invalid(path, f"no {MANIFEST_KEY!r} manifest in the safetensors metadata")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(path, f"manifest is not JSON ({exc})") from None
    return _check_manifest(manifest, path)


def _decode(name: str, entry: dict, f: Any, path: Path) -> torch.Tensor:
    """Rebuild one tensor (in its storage dtype) from the file ``f``."""
    keys = set(f.keys())
    dtype, shape, nnz = DTYPES[entry["dtype"]], entry["shape"], entry["nnz"]
    numel = math.prod(shape)

    def get(key: str, expected_dtype: torch.dtype) -> torch.Tensor:
        if key not in keys:
            raise _invalid(path, f"tensor {key!r} is missing")
        t = f.get_tensor(key)
        if t.dtype != expected_dtype:
            raise _invalid(path, f"tensor {key!r} is {t.dtype}, expected {expected_dtype}")
        return t

    if entry["encoding"] == "dense":
        tensor = get(name, dtype)
        if list(tensor.shape) != shape:
            raise _invalid(
                path, f"tensor {name!r} has shape {list(tensor.shape)}, expected {shape}"
            )
        return tensor
    values = get(f"{name}.values", dtype)
    if entry["encoding"] == "bitmask":
        packed = get(f"{name}.mask", torch.uint8).numpy()
        if packed.size != (numel + 7) // 8:
            raise _invalid(path, f"{name}.mask has {packed.size} bytes for {numel} entries")
        positions = np.flatnonzero(np.unpackbits(packed, count=numel))
    else:
        try:
            positions = decode_gaps(get(f"{name}.index", torch.uint8).numpy())
        except ValueError as exc:
            raise _invalid(path, f"{name}.index: {exc}") from None
    if not (len(positions) == values.numel() == nnz) or (nnz and positions[-1] >= numel):
        raise _invalid(path, f"{name}: positions, values and nnz disagree")
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(positions)] = values.flatten()
    return flat.view(shape)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the runnable model (float32 weights, eval mode, on ``device``) and its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    entries = manifest["tensors"]
    try:
        shapes = {name: entry["shape"] for name, entry in entries.items()}
        mismatch = _mismatched_tensors(manifest["architecture"], manifest["config"], shapes)
    except (ValueError, TypeError) as exc:
        raise _invalid(path, f"cannot build the model: {exc}") from None
    if mismatch:
        raise _invalid(path, f"tensors do not match the architecture: {', '.join(mismatch)}")
    model = build_model(manifest["architecture"], manifest["config"])
    with _open(path) as f:
        for name, target in model.state_dict().items():
            target.copy_(_decode(name, entries[name], f, path).to(target.dtype))
    return model.to(device).eval(), manifest


def load_weights(
    path: Path, architecture: str, config: dict, device: str | torch.device = "cpu"
) -> nn.Module:
    """A model of ``architecture`` / ``config`` with the weights of a plain safetensors file.

    This reads what users upload as a model's weights: a ``state_dict`` saved with
    ``safetensors.torch.save_file``. Names and shapes must match the architecture exactly;
    floating-point tensors are cast to the model's dtype. The model is returned in eval mode.
    """
    path = Path(path)
    with _open(path) as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
        mismatch = _mismatched_tensors(architecture, config, shapes)
        if mismatch:
            raise ValueError(
                f"{path}: weights do not match {architecture} with config {config}: "
                f"differs in {', '.join(mismatch)}"
            )
        model = build_model(architecture, config)
        for name, target in model.state_dict().items():
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() != target.is_floating_point():
                raise ValueError(
                    f"{path}: tensor {name!r} is {tensor.dtype}, expected {target.dtype}"
                )
            target.copy_(tensor.to(target.dtype))
    return model.to(device).eval()
