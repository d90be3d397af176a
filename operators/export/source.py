"""The ``export:`` model source: a user's ``torch.export.save`` archive (``.pt2``).

Registered in :data:`operators.models.sources.SOURCES` when :mod:`operators.export` is
imported. Two forms, both read without pickle:

- ``export:<path>`` with ``config`` ``{}``: the archive at ``<path>``, read by
  :func:`operators.export.program.read_archive` (every entry checked). A path is read only
  inside a root the embedding code allowed with :func:`allow_root` (the service allows its
  artifact root); a relative path is looked up under each allowed root. With none allowed
  every such model is refused.
- ``export:<label>`` with ``config`` ``{"program": ..., "tensors": ..., "constants": ...}``:
  the self-contained record a packed checkpoint stores (the ``record`` hook of
  :func:`~operators.models.sources.register_source`): the archive's program JSON as it is,
  the dtype, shape and kind (``parameter``) of every parameter and buffer (their values are
  the checkpoint's), and the program's constants (lifted tensors, non-persistent buffers) as
  base64 of their raw bytes. No file is read; the graph passes the same checks as an archive's.

Either way the model is ``ExportedProgram.module()`` rewritten by
:func:`operators.export.rewrite.to_layers`, so ``aten.linear`` / ``aten.conv2d`` calls on
parameters become ``nn.Linear`` / ``nn.Conv2d`` layers the compression ops find, with the same
state-dict keys; the per-sample input comes from the program's signature, whose batch
dimension must be dynamic (a fixed batch size is refused: the model must run any batch).
``neuron_prune`` and ``filter_prune`` are refused for these models (:data:`REFUSED_OPS`:
torch-pruning's dependency graph finds nothing to remove in a graph of ATen calls).
"""

from __future__ import annotations

import base64
import binascii
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from operators.export.program import (
    check_program,
    has_dynamic_batch,
    program_from_json,
    program_input,
    read_archive,
)
from operators.export.rewrite import to_layers
from operators.models.sources import SourceError, register_source

ROOTS: list[Path] = []
RECORD_KEYS = ("program", "tensors", "constants")
MAX_CONSTANT_BYTES = 64 << 20
DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"
)}  # fmt: skip


def allow_root(root: Path) -> None:
    """Let ``export:`` paths under ``root`` be read."""
    resolved = Path(root).resolve()
    if resolved not in ROOTS:
        ROOTS.append(resolved)


def archive_path(name: str) -> Path:
    """The resolved archive of ``export:<name>``; SourceError unless inside an allowed root."""
    given = Path(name)
    candidates = [given.resolve()] if given.is_absolute() else [(r / given).resolve() for r in ROOTS]
    for path in candidates:
        if any(path.is_relative_to(root) for root in ROOTS) and path.is_file():
            return path
    if not any(any(p.is_relative_to(root) for root in ROOTS) for p in candidates):
        raise SourceError("architecture", f"export:{name}: not inside an allowed root "
                          f"({', '.join(map(str, ROOTS)) or 'none allowed'})")  # fmt: skip
    raise SourceError("architecture", f"export:{name}: no such file")


def _read(name: str) -> tuple[dict, dict, dict, str]:
    try:
        return read_archive(archive_path(name))
    except SourceError:
        raise
    except ValueError as exc:
        raise SourceError("architecture", f"export:{name}: {exc}") from None


def _is_record(config: dict) -> bool:
    return "program" in config


def _check(name: str, config: dict) -> None:
    if _is_record(config):
        _record_tensors(name, config)
        return
    if config:
        raise SourceError("config", "must be {} for an export: model (the program fixes it)")
    archive_path(name)


def _meta(where: str, entry: Any) -> tuple[torch.dtype, list[int]]:
    if not (isinstance(entry, dict) and entry.get("dtype") in DTYPES and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])):  # fmt: skip
        raise SourceError(where, f"must be {{'dtype': one of {', '.join(DTYPES)}, 'shape': [...]}}")
    return DTYPES[entry["dtype"]], entry["shape"]


def _record_tensors(name: str, config: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights as zeros of their recorded dtype and shape, constants decoded) of a record."""
    unknown = sorted(set(config) - set(RECORD_KEYS))
    if unknown:
        raise SourceError("config", f"unknown key(s) {unknown} in an export: record; allowed: {RECORD_KEYS}")
    try:
        check_program(config["program"], "config.program")
    except ValueError as exc:
        raise SourceError("config.program", str(exc)) from None
    tensors, constants = config.get("tensors", {}), config.get("constants", {})
    if not isinstance(tensors, dict) or not isinstance(constants, dict):
        raise SourceError("config", "'tensors' and 'constants' must be objects")
    weights = {}
    for fqn, entry in tensors.items():
        dtype, shape = _meta(f"config.tensors.{fqn}", entry)
        zeros = torch.zeros(shape, dtype=dtype)
        weights[fqn] = nn.Parameter(zeros, requires_grad=False) if entry.get("parameter") else zeros
    values, total = {}, 0
    for fqn, entry in constants.items():
        dtype, shape = _meta(f"config.constants.{fqn}", entry)
        try:
            raw = base64.b64decode(entry.get("data", ""), validate=True)
        except (binascii.Error, TypeError) as exc:
            raise SourceError(f"config.constants.{fqn}", f"data is not base64 ({exc})") from None
        total += len(raw)
        element = torch.empty((), dtype=dtype).element_size()
        if total > MAX_CONSTANT_BYTES or len(raw) != math.prod(shape) * element:
            raise SourceError(f"config.constants.{fqn}", f"constant {fqn!r}: {len(raw)} bytes for "
                              f"{dtype} {shape} (or past {MAX_CONSTANT_BYTES} in all)")  # fmt: skip
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        values[fqn] = flat.reshape(shape).clone()
    return weights, values


def _program(name: str, config: dict) -> torch.export.ExportedProgram:
    with torch.device("cpu"):  # the serde needs real tensors (a meta-device caller gets CPU ones)
        if _is_record(config):
            weights, constants = _record_tensors(name, config)
            return program_from_json(config["program"], weights, constants, "config.program")
        program_json, weights, constants, entry = _read(name)
        try:
            return program_from_json(program_json, weights, constants, entry)
        except ValueError as exc:
            raise SourceError("architecture", f"export:{name}: {exc}") from None


def _build(name: str, config: dict) -> nn.Module:
    with torch.device("cpu"):
        module = to_layers(_program(name, config).module())
    for parameter in module.parameters():  # read-only as loaded; trainable like any model's
        parameter.requires_grad_(parameter.is_floating_point())
    return module


def _input(name: str, config: dict) -> tuple[list[int] | None, str]:
    program = _program(name, config)
    if not has_dynamic_batch(program):
        raise SourceError("architecture", f"export:{name}: the program was exported with a fixed "
                          "batch size, so it cannot run the dataset's batches; export it with "
                          "dynamic_shapes=({0: torch.export.Dim('batch')},)")  # fmt: skip
    return program_input(program)


def _tensor_meta(tensor: torch.Tensor) -> dict[str, Any]:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise SourceError("architecture", f"a tensor of dtype {name} cannot be recorded")
    return {"dtype": name, "shape": list(tensor.shape)}


def _raw(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return base64.b64encode(flat.numpy().tobytes()).decode("ascii")


def record(name: str, config: dict) -> dict:
    """The self-contained config of ``export:<name>`` (the second form of the docstring)."""
    if _is_record(config):
        return config
    program_json, weights, constants, _entry = _read(name)
    return {
        "program": program_json,
        "tensors": {fqn: {**_tensor_meta(t), "parameter": isinstance(t, nn.Parameter)}
                    for fqn, t in weights.items()},
        "constants": {
            fqn: {**_tensor_meta(t), "data": _raw(t)}
            for fqn, t in constants.items()
        },
    }


CHANNEL_REMOVAL = (
    "removes channels through torch-pruning's dependency graph, which finds no prunable layer "
    "in an exported program (its batch norms, adds and reshapes are ATen calls, not modules); "
    "use prune, block_prune, nm_prune, cluster, unify, quantize, lowrank or mpd"
)
REFUSED_OPS = {
    "neuron_prune": CHANNEL_REMOVAL,
    "filter_prune": CHANNEL_REMOVAL,
    "head_prune": "removes attention heads of attention modules; an exported program has none "
    "(its attention is ATen calls)",
}

register_source("export", _build, check=_check, default_input=_input, record=record,
                refused_ops=REFUSED_OPS,
                description="a torch.export.save archive (.pt2), read without pickle")  # fmt: skip
