"""The packed checkpoint: one file a user downloads and loads without pickle.

Writers use format v3 by default, the compact container of :mod:`operators.format.container`
(magic ``ACPK``, a Brotli-coded binary index, entropy-coded integer streams); v2, a plain
safetensors file, stays selectable (``format_version=2``). Readers tell them apart by the magic
and load v1, v2 and v3. Both hold the same manifest and streams; :func:`read_manifest` returns
it in the v2 form below (``"version"`` 3 for a container).

A v2 file's string metadata holds, under the key ``"autocompress"``, a compact JSON manifest::

    {"format": "autocompress-packed", "version": 2,
     "architecture": "lenet-300-100", "config": {...}, "input_shape": [1, 28, 28],
     "modules": {"fc2": {"kind": "mpd_linear", "args": {"in_features": 300, ...}}, ...},
     "tensors": {"fc1.weight": {"encoding": "index", "shape": [300, 784],
                                "dtype": "float16", "nnz": 11760}, ...},
     "metadata": {...}}

``modules`` lists every module that differs from the base architecture, as a kind of
:data:`operators.core.registry.MODULE_KINDS` and its constructor arguments: layers that structural
pruning made smaller (``linear``, ``conv2d``, ``batchnorm2d`` with other shapes) and packed
runtime modules (``mpd_linear``, ...). ``architecture`` is a model source's
``source:name`` (``timm:resnet18``, ``hf:image-classification``; a bare name is a zoo name) and
``config`` its keyword arguments. The loader builds the base architecture with
:func:`operators.models.sources.build`, replaces those modules, checks every tensor's shape against
the result, fills the weights, and then lets :func:`operators.runtime.select_runtime` choose
per layer the faster of the packed and dense forms on the device (``runtime="auto"``).
``input_shape`` (per sample, when known) gives that measurement the layers' real shapes.

Each state-dict entry (parameter or buffer) of the packed model is stored with one encoding,
the smallest for it:

``dense``    the tensor itself, under its own name, in its storage dtype.
``bitmask``  ``<name>.mask``: ``np.packbits`` of the flattened nonzero pattern (uint8, big bit
             order, ``ceil(numel / 8)`` bytes), and ``<name>.values``: the nonzeros in order.
``index``    ``<name>.index``: the nonzero positions in the gap codec with 8-bit symbols
             (:mod:`operators.format.codecs`; gap ``g_i = pos_i - pos_{i-1} - 1`` is written
             as ``g_i // 255`` bytes of 255 followed by one byte ``g_i % 255``), and
             ``<name>.values``.
``block``    only for weights an op pruned in blocks (entry ``"block": [rows, cols]``; the
             weight viewed 2-D ``(out, rest)``, zero-padded to whole blocks):
             ``<name>.blockmask``: packbits of the kept blocks (row-major), and
             ``<name>.values``: the kept blocks' ``rows * cols`` values each, in that order.

"Nonzero" is bitwise (``-0.0`` is kept as a value), so a round trip is bit-exact. Storage
dtype is float32 unless an op chose another one (``quantize``); integer parameters (the int8
values of ``quantize int8``) keep their dtype and may be stored sparse; buffers are always
dense in their own dtype. The loader rebuilds the module with :func:`operators.models.sources.build`
and fills the weights; anything inconsistent in the file is a ValueError.
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

from operators.core.model import CompressedModel
from operators.core.registry import (
    MODULE_KINDS,
    RESIZED,
    PackedModule,
    build_module,
    describe,
    describe_resized,
    resize_module,
)
from operators.format import container
from operators.format.codecs import block_view, decode_gaps, encode_gaps, nonzero_bits
from operators.models.sources import SourceError, build, model_info, portable_config
from operators.models.weights import mismatch_report, rename
from operators.runtime import pack_model, select_runtime

MANIFEST_KEY = "autocompress"
FORMAT = "autocompress-packed"
VERSION = container.VERSION  # written by default; 2 stays selectable (``format_version``)
READABLE_VERSIONS = (1, 2, 3)
WRITABLE_VERSIONS = (2, 3)
ENCODINGS = ("dense", "bitmask", "index", "block")
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool",
                 "int8")
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_ENTRY_OVERHEAD = 64  # approximate bytes of safetensors header per stored tensor


# -- encoding ---------------------------------------------------------------------------------


def candidate_encodings(
    name: str, tensor: torch.Tensor, storage: torch.dtype, block: tuple[int, int] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Every encoding of ``tensor`` (already projected, CPU) as the tensors it would store."""
    values = tensor.to(storage).contiguous()
    flat = tensor.flatten()
    nonzero = nonzero_bits(flat)
    packed_values = values.flatten()[nonzero]
    mask_bytes = np.packbits(nonzero.numpy())
    positions = np.flatnonzero(nonzero.numpy())
    candidates = {
        "dense": {name: values},
        "bitmask": {f"{name}.mask": torch.from_numpy(mask_bytes), f"{name}.values": packed_values},
        "index": {
            f"{name}.index": encode_gaps(positions)[0],
            f"{name}.values": packed_values,
        },
    }
    if block is not None and tensor.dim() >= 2:
        blocks = block_view(values, block)
        kept = nonzero_bits(block_view(tensor, block).reshape(-1)).view(blocks.shape)
        kept = kept.flatten(2).any(-1)
        candidates["block"] = {
            f"{name}.blockmask": torch.from_numpy(np.packbits(kept.flatten().numpy())),
            f"{name}.values": blocks[kept].flatten().contiguous(),
        }
    return candidates


def stored_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Approximate file bytes of storing ``tensors``: data plus per-entry header overhead."""
    return sum(t.numel() * t.element_size() + _ENTRY_OVERHEAD for t in tensors.values())


def _encode(
    name: str,
    tensor: torch.Tensor,
    storage: torch.dtype,
    allow_sparse: bool,
    block: tuple[int, int] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest entry, tensors to store) for one state-dict entry, smallest encoding first."""
    tensor = tensor.detach().cpu()
    if allow_sparse and (tensor.is_floating_point() or tensor.dtype == torch.int8) and tensor.numel():
        candidates = candidate_encodings(name, tensor, storage, block)
        encoding = min(candidates, key=lambda e: stored_bytes(candidates[e]))
        stored = candidates[encoding]
    else:
        encoding, stored = "dense", {name: tensor.to(storage).contiguous().clone()}
    entry = {
        "encoding": encoding,
        "shape": list(tensor.shape),
        "dtype": _dtype_name(storage),
        "nnz": int(nonzero_bits(tensor.flatten()).sum()),
    }
    if encoding == "block":
        entry["block"] = list(block)
    return entry, stored


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype {dtype} cannot be stored; allowed: {', '.join(DTYPES)}")
    return _DTYPE_NAMES[dtype]


def build_packed(architecture: str, config: dict, modules: dict[str, dict]) -> nn.Module:
    """The base architecture with the recorded ``modules`` replaced (``{"kind", "args"}``)."""
    model = build(architecture, config)
    for name in sorted(modules, key=lambda n: n.count(".")):
        record = modules[name]
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"module {name!r} is not in {architecture}") from None
        if record["kind"] == RESIZED:
            resize_module(model.get_submodule(name), record["args"])
        else:
            model.set_submodule(name, build_module(record["kind"], record["args"]))
    return model


def module_changes(model: nn.Module, architecture: str, config: dict) -> dict[str, dict]:
    """``{"kind", "args"}`` of every module of ``model`` that differs from the architecture."""
    with torch.device("meta"):
        base = dict(build(architecture, config).named_modules())
    changes = {}
    for name, module in model.named_modules():
        record = describe(module)
        if record is None:
            resized = describe_resized(module, base[name]) if name in base else None
            if resized is not None:
                changes[name] = resized
            continue
        if name not in base:  # inside a replaced module (a lowrank factor): record packed ones
            if isinstance(module, PackedModule):
                changes[name] = record
            continue
        if isinstance(module, PackedModule) or record != describe(base[name]):
            changes[name] = record
    return changes


def _mismatched_tensors(
    architecture: str,
    config: dict,
    shapes: dict[str, Sequence[int]],
    modules: dict[str, dict] | None = None,
) -> list[str]:
    """State-dict names whose presence or shape differ between ``shapes`` and the architecture
    (with ``modules`` replaced).

    The model is built on the meta device: nothing is allocated or initialised.
    """
    with torch.device("meta"):
        model = build_packed(architecture, config, modules or {})
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return sorted(
        name
        for name in expected.keys() | shapes.keys()
        if name not in expected or name not in shapes or tuple(shapes[name]) != expected[name]
    )


def _source_names(model: nn.Module) -> dict[str, str]:
    """Packed parameter name -> the dense parameter it came from (e.g. fc1.blocks -> fc1.weight)."""
    sources = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PackedModule):
            prefix = f"{module_name}." if module_name else ""
            for packed, dense in module.SOURCES.items():
                sources[prefix + packed] = prefix + dense
    return sources


def _write(
    cm: CompressedModel,
    path: Path,
    architecture: str,
    config: dict,
    metadata: dict | None,
    allow_sparse: bool,
    format_version: int = VERSION,
) -> int:
    if format_version not in WRITABLE_VERSIONS:
        raise ValueError(f"format_version: must be one of {WRITABLE_VERSIONS}, got {format_version!r}")
    config = portable_config(architecture, config)  # self-contained: rebuilt with nothing else
    model = pack_model(cm)
    modules = module_changes(model, architecture, config)
    state = model.state_dict()
    resized = {n for n, r in modules.items() if not isinstance(model.get_submodule(n), PackedModule)}
    mismatch = sorted(resized) if resized and not cm.structural else _mismatched_tensors(
        architecture, config, {k: v.shape for k, v in state.items()}, modules
    )
    if mismatch:
        raise ValueError(
            f"model does not match {architecture} with config {config}: "
            f"differs in {', '.join(mismatch)}"
        )
    params = dict(model.named_parameters())
    sources = _source_names(model)
    entries, tensors = {}, {}
    for name, tensor in state.items():
        source = sources.get(name, name)
        floating = name in params and tensor.is_floating_point()  # int8 values keep int8
        storage = cm.storage_dtype(source) if floating else tensor.dtype
        entries[name], stored = _encode(
            name, tensor, storage, allow_sparse and name in params, cm.blocks.get(source)
        )
        tensors.update(stored)
    manifest = {
        "format": FORMAT,
        "version": format_version,
        "architecture": architecture,
        "config": config,
        "input_shape": cm.input_shape,
        "modules": modules,
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
        if format_version == 2:
            save_file(tensors, tmp, metadata={MANIFEST_KEY: text})
        else:
            container.write_container(Path(tmp), manifest, tensors)
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
    format_version: int = VERSION,
) -> int:
    """Write ``cm`` packed (sparse where smaller, storage dtypes) to ``path``; return its size.

    The weights written are ``cm``'s projection (what :meth:`CompressedModel.enforce` gives);
    ``cm`` itself is not modified.
    """
    return _write(cm, path, architecture, config, metadata, True, format_version)


def save_dense_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    architecture: str,
    config: dict,
    metadata: dict | None = None,
    format_version: int = VERSION,
) -> int:
    """Write ``model`` as plain dense tensors in the same format (the baseline); return its size."""
    return _write(CompressedModel(model), path, architecture, config, metadata, False, format_version)


# -- loading ----------------------------------------------------------------------------------


def _invalid(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a valid autocompress checkpoint: {why}")


def _check_manifest(manifest: Any, path: Path) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid(path, f"manifest 'format' must be {FORMAT!r}")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise _invalid(
            path, f"unsupported version {manifest.get('version')!r}; this reads {READABLE_VERSIONS}"
        )
    if not isinstance(manifest.get("architecture"), str):
        raise _invalid(path, "manifest 'architecture' must be a string")
    if not isinstance(manifest.get("config"), dict):
        raise _invalid(path, "manifest 'config' must be an object")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise _invalid(path, "manifest 'metadata' must be an object")
    modules = manifest.setdefault("modules", {})
    if not isinstance(modules, dict) or not all(
        isinstance(r, dict) and r.get("kind") in (*MODULE_KINDS, RESIZED) and isinstance(r.get("args"), dict)
        for r in modules.values()
    ):
        raise _invalid(path, "manifest 'modules' must map names to a known kind and its args")
    shape = manifest.setdefault("input_shape", None)
    if shape is not None and not (
        isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise _invalid(path, "manifest 'input_shape' must be a list of positive integers")
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


def _open_checkpoint(path: Path) -> Any:
    """A v3 :class:`~operators.format.container.Container` or a v1/v2 safetensors handle."""
    if not container.is_container(path):
        return _open(path)
    try:
        return container.Container(path)
    except ValueError as exc:
        raise _invalid(path, str(exc)) from None


def read_manifest(path: Path) -> dict:
    """The validated manifest of a packed checkpoint (ValueError if missing or invalid): the
    JSON of a v1/v2 file, or the same fields read from a v3 container's index."""
    path = Path(path)
    if container.is_container(path):
        manifest = {"format": FORMAT, "version": container.VERSION}
        manifest.update(_open_checkpoint(path).manifest)
        return _check_manifest(manifest, path)
    with _open(path) as f:
        text = (f.metadata() or {}).get(MANIFEST_KEY)
    if text is None:
        raise _invalid(path, f"no {MANIFEST_KEY!r} manifest in the safetensors metadata")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(path, f"manifest is not JSON ({exc})") from None
    manifest = _check_manifest(manifest, path)
    declared, limit = container.declared_bytes(manifest["tensors"]), container.declared_limit(
        path.stat().st_size
    )
    if declared > limit:
        raise _invalid(path, f"it declares {declared} bytes of tensors, more than {limit}")
    return manifest


def _decode(name: str, entry: dict, f: Any, path: Path) -> torch.Tensor:
    """Rebuild one tensor (in its storage dtype) from the file ``f``."""
    keys = set(f.keys())
    dtype, shape, nnz = DTYPES[entry["dtype"]], entry["shape"], entry["nnz"]
    numel = math.prod(shape)

    def get(key: str, expected_dtype: torch.dtype) -> torch.Tensor:
        if key not in keys:
            raise _invalid(path, f"tensor {key!r} is missing")
        try:
            t = f.get_tensor(key)
        except ValueError as exc:  # a v3 stream that does not decode
            raise _invalid(path, str(exc)) from None
        if t.dtype != expected_dtype:
            raise _invalid(path, f"tensor {key!r} is {t.dtype}, expected {expected_dtype}")
        return t

    if entry["encoding"] == "block":
        return _decode_blocks(name, entry, get, path)
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
            positions = decode_gaps(get(f"{name}.index", torch.uint8))
        except ValueError as exc:
            raise _invalid(path, f"{name}.index: {exc}") from None
    if not (len(positions) == values.numel() == nnz) or (nnz and positions[-1] >= numel):
        raise _invalid(path, f"{name}: positions, values and nnz disagree")
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(positions)] = values.flatten()
    return flat.view(shape)


def _decode_blocks(name: str, entry: dict, get: Any, path: Path) -> torch.Tensor:
    """Rebuild a ``block``-encoded weight (see the module docstring)."""
    dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
    block = entry.get("block")
    if not (
        isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)
    ) or len(shape) < 2:
        raise _invalid(path, f"{name}: bad block entry")
    out = torch.zeros(shape, dtype=dtype)
    blocks = block_view(out, tuple(block)).contiguous()
    grid = blocks.shape[0] * blocks.shape[1]
    packed = get(f"{name}.blockmask", torch.uint8).numpy()
    if packed.size != (grid + 7) // 8:
        raise _invalid(path, f"{name}.blockmask has {packed.size} bytes for {grid} blocks")
    kept = torch.from_numpy(np.unpackbits(packed, count=grid).astype(bool)).view(blocks.shape[:2])
    values = get(f"{name}.values", dtype)
    if values.numel() != int(kept.sum()) * block[0] * block[1]:
        raise _invalid(path, f"{name}: block mask and values disagree")
    blocks[kept] = values.view(-1, block[0], block[1])
    rows, cols = blocks.shape[0] * block[0], blocks.shape[1] * block[1]
    flat = blocks.permute(0, 2, 1, 3).reshape(rows, cols)[: shape[0], : math.prod(shape[1:])]
    out.copy_(flat.reshape(shape))
    if int(nonzero_bits(out.flatten()).sum()) != entry["nnz"]:
        raise _invalid(path, f"{name}: positions, values and nnz disagree")
    return out


def load_checkpoint(
    path: Path, device: str | torch.device = "cpu", *, runtime: str = "auto"
) -> tuple[nn.Module, dict]:
    """Rebuild the runnable model (float32 weights, eval mode, on ``device``) and its manifest.

    ``runtime``: ``"auto"`` runs, per compressed layer and batch size, whichever of its
    packed and dense forms was measured faster on ``device`` (see :mod:`operators.runtime`);
    ``"packed"`` keeps every packed form;
    ``"dense"`` gives plain layers only (the model the compression was trained as).
    """
    path = Path(path)
    manifest = read_manifest(path)
    entries = manifest["tensors"]
    architecture, config, modules = manifest["architecture"], manifest["config"], manifest["modules"]
    try:
        shapes = {name: entry["shape"] for name, entry in entries.items()}
        mismatch = _mismatched_tensors(architecture, config, shapes, modules)
    except (ValueError, TypeError) as exc:
        raise _invalid(path, f"cannot build the model: {exc}") from None
    if mismatch:
        raise _invalid(path, f"tensors do not match the architecture: {', '.join(mismatch)}")
    model = build_packed(architecture, config, modules)
    with _open_checkpoint(path) as f, torch.no_grad():
        for name, target in model.state_dict().items():
            target.copy_(_decode(name, entries[name], f, path).to(target.dtype))
    model = model.to(device).eval()
    return select_runtime(model, runtime, manifest["input_shape"]), manifest


def load_weights(
    path: Path,
    architecture: str,
    config: dict,
    device: str | torch.device = "cpu",
    *,
    key_map: dict | None = None,
    max_params: int | None = None,
) -> nn.Module:
    """A model of ``architecture`` / ``config`` with the weights of a plain safetensors file.

    This reads what users upload as a model's weights: a ``state_dict`` saved with
    ``safetensors.torch.save_file``, its names renamed by ``key_map``
    (:mod:`operators.models.weights`). Before anything is allocated the model is sized on the
    meta device (a :class:`~operators.models.sources.SourceError` above ``max_params``) and
    the file's header (names and shapes only) is checked against it: a SourceError on field
    ``weights`` lists the missing, unexpected and wrongly shaped keys. Floating-point tensors
    are cast to the model's dtype. The model is returned in eval mode.
    """
    path = Path(path)
    info = model_info(architecture, config, max_params=max_params, need_input=False)
    with _open(path) as f:
        names = rename(list(f.keys()), key_map)
        shapes = {new: tuple(f.get_slice(old).get_shape()) for new, old in names.items()}
        report = mismatch_report(info.state_shapes, shapes)
        if report:
            raise SourceError(
                "weights", f"the weights do not fit {architecture} with config {config}: {report}",
            )  # fmt: skip
        model = build(architecture, config)
        with torch.no_grad():
            for name, target in model.state_dict().items():
                tensor = f.get_tensor(names[name])
                if tensor.is_floating_point() != target.is_floating_point():
                    raise SourceError(
                        "weights", f"tensor {names[name]!r} is {tensor.dtype}, expected {target.dtype}"
                    )
                target.copy_(tensor.to(target.dtype))
    return model.to(device).eval()
