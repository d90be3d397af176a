"""Reading a user's ``torch.export.save`` archive (``.pt2``) without unpickling anything.

A ``.pt2`` of this torch version is a zip whose entries all sit under one root folder::

    <root>/archive_format, archive_version, byteorder, .data/version, .data/serialization_id
    <root>/models/<name>.json                      the exported program (graph, signature) as JSON
    <root>/data/weights/<name>_weights_config.json per parameter / buffer: file, dtype, sizes,
    <root>/data/weights/weight_<i>                 strides, offset, use_pickle; raw bytes
    <root>/data/constants/<name>_constants_config.json, tensor_<i>   the same for constants
    <root>/data/sample_inputs/<name>.pt            the example inputs: a torch.save PICKLE
    <root>/extra/...                               free-form extra files

:func:`read_program` checks the archive before reading anything: one root, known entry names
only (AOTInductor / ExecuTorch / MTIA payloads and any ``.so`` are native code and refused),
every entry's declared size under ``max_entry_bytes`` and the total under ``max_total_bytes``,
and each entry read back whole (a truncated or corrupt entry is a ValueError naming it). The
sample inputs are never unpickled: their entry must be a ``torch.save`` zip whose ``data.pkl``,
scanned opcode by opcode with :mod:`pickletools` (nothing executed), names only the globals
that rebuild tensors (:func:`check_sample_inputs`); any other global, such as a pickle that
would run code, refuses the archive naming the entry. ``extra/`` is never read. Weights and constants are read as raw
bytes into tensors of their recorded dtype and layout (a pickled entry: a tensor subclass,
a custom or opaque object, is refused). The graph JSON is checked before it is deserialized:
every node target must be an ATen, ``quantized_decomposed`` or ``operator`` function (not an
arbitrary ``torch.*`` callable), and every symbolic-shape expression, which torch parses
with ``sympy.sympify`` (``eval``), may use only sympy / torch shape-function names, symbol
names and numbers. Then ``torch._export.serde.serialize.ExportedProgramDeserializer``
rebuilds the program from that JSON and these tensors, with no example inputs.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAX_ENTRY_BYTES = 1 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_JSON_BYTES = 64 << 20
MAX_ENTRIES = 100_000
FIXED_ENTRIES = ("archive_format", "archive_version", "byteorder", ".data/version",
                 ".data/serialization_id")  # fmt: skip
SAMPLE_INPUTS = "data/sample_inputs/"  # a pickle: scanned, never unpickled
IGNORED_PREFIXES = (SAMPLE_INPUTS, "extra/")  # never unpickled / never read
SAMPLE_GLOBALS = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                            "collections.OrderedDict", "torch.Size", "torch.device"})  # fmt: skip
REFUSED_PREFIXES = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
TARGET_PREFIXES = ("torch.ops.aten.", "torch.ops.quantized_decomposed.", "_operator.", "math.",
                   "torch.sym_")  # fmt: skip
REFUSED_TARGETS = ("torch.ops.aten.from_file",)  # reads a file named by the graph
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(rf"\s+|'{_NAME}'|{_NAME}|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\*\*|[-+*/%(),=<>!&|~]")
SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Mul Add Pow Max Min Abs Eq Ne Ge Gt Le Lt And Or Not True "
    "False true false oo zoo nan Infinity NegativeInfinity StrictGreaterThan StrictLessThan "
    "GreaterThan LessThan Equality Unequality floor ceiling sqrt Piecewise ExprCondPair "
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift "
    "RShift IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal "
    "ToFloat FloatPow PowByNatural IntTrueDiv FloatTrueDiv Identity OpaqueUnaryFn_sqrt "
    "BitwiseFn_bitwise_and BitwiseFn_bitwise_or BitwiseFn_bitwise_xor "
    "positive negative integer nonnegative nonpositive real finite zero nonzero even odd "
    "commutative rational infinite prime".split()
)


def _refuse(entry: str, why: str) -> ValueError:
    return ValueError(f"{entry}: {why}")


def _entries(archive: zipfile.ZipFile, path: Path, max_entry: int, max_total: int) -> tuple[str, dict]:
    """(root folder, entry name below it -> ZipInfo), every name and size checked."""
    infos = archive.infolist()
    if not infos or len(infos) > MAX_ENTRIES:
        raise ValueError(f"{path}: a .pt2 archive holds 1 to {MAX_ENTRIES} entries, this {len(infos)}")
    root = infos[0].filename.split("/", 1)[0]
    entries, total = {}, 0
    for info in infos:
        name = info.filename
        head, _, rest = name.partition("/")
        if head != root or not rest or name.startswith("/") or ".." in name.split("/") or "\\" in name:
            raise _refuse(name, f"not under the archive's one root folder {root!r}")
        if posixpath.normpath(rest) != rest.rstrip("/"):
            raise _refuse(name, "not a normalised entry name")
        if info.flag_bits & 0x1:
            raise _refuse(name, "encrypted entries are not read")
        if info.file_size > max_entry:
            raise _refuse(name, f"{info.file_size} bytes, more than the limit of {max_entry}")
        total += info.file_size
        if total > max_total:
            raise _refuse(name, f"the archive's entries pass the limit of {max_total} bytes")
        if rest.endswith(".so") or rest.startswith(REFUSED_PREFIXES):
            raise _refuse(name, "native code (AOTInductor / ExecuTorch) is never loaded")
        known = (
            rest in FIXED_ENTRIES
            or rest.endswith("/")
            or rest.startswith(IGNORED_PREFIXES)
            or re.fullmatch(rf"models/{_NAME}\.json", rest)
            or re.fullmatch(r"data/(weights|constants)/[A-Za-z0-9_.]+", rest)
        )
        if not known:
            raise _refuse(name, "not an entry of a torch.export archive")
        entries[rest] = info
    return root, entries


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The whole entry (declared size already checked), or a ValueError naming it."""
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, NotImplementedError) as exc:
        raise _refuse(info.filename, f"truncated or corrupt ({exc})") from None
    if len(data) != info.file_size or len(data) > limit:
        raise _refuse(info.filename, f"read {len(data)} bytes, the archive declares {info.file_size}")
    return data


def _json(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    if info.file_size > MAX_JSON_BYTES:
        raise _refuse(info.filename, f"{info.file_size} bytes of JSON, more than {MAX_JSON_BYTES}")
    try:
        return json.loads(_read(archive, info, MAX_JSON_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(info.filename, f"not JSON ({exc})") from None


def _allowed_globals() -> frozenset[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # a private helper: without it the fixed set, plus storage types
        return SAMPLE_GLOBALS
    return SAMPLE_GLOBALS | frozenset(_get_allowed_globals())


def check_sample_inputs(data: bytes, entry: str) -> None:
    """ValueError naming ``entry`` unless ``data`` is a ``torch.save`` zip whose pickle names
    only tensor-rebuilding globals (the ``weights_only`` allowlist). Nothing is unpickled."""
    import io
    import pickletools

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            pickles = [i for i in inner.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > MAX_JSON_BYTES:
                raise _refuse(entry, "not a torch.save archive with one data.pkl")
            text = _read(inner, pickles[0], MAX_JSON_BYTES)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(entry, f"not a torch.save archive ({exc}); a bare pickle is never loaded") from None
    allowed = _allowed_globals()
    try:
        for opcode, arg, _pos in pickletools.genops(text):
            if opcode.name in ("STACK_GLOBAL", "INST", "OBJ"):
                raise _refuse(entry, f"pickle opcode {opcode.name} is not allowed (nothing was unpickled)")
            if opcode.name == "GLOBAL":
                name = ".".join(str(arg).split(" ", 1))
                if name not in allowed and not re.fullmatch(r"torch\.\w*Storage", name):
                    raise _refuse(entry, f"the pickle names {name!r}, which does not rebuild a "
                                  "tensor; refused (nothing was unpickled)")  # fmt: skip
    except ValueError as exc:
        if str(exc).startswith(entry):
            raise
        raise _refuse(entry, f"not a readable pickle ({exc})") from None


def _tensors(
    archive: zipfile.ZipFile, entries: dict, root: str, folder: str, config_name: str, limit: int
) -> dict[str, torch.Tensor]:
    """Every tensor a weights / constants config lists, read raw (pickled ones refused)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    config_entry = f"{folder}{config_name}"
    if config_entry not in entries:
        return {}
    try:
        config = _dict_to_dataclass(schema.PayloadConfig, _json(archive, entries[config_entry]))
    except (TypeError, KeyError, AttributeError, AssertionError, ValueError) as exc:
        raise _refuse(f"{root}/{config_entry}", f"not a payload config ({exc})") from None
    out: dict[str, torch.Tensor] = {}
    for fqn, meta in config.config.items():
        entry = f"{root}/{folder}{meta.path_name}"
        if meta.use_pickle or meta.tensor_meta is None or not meta.path_name.startswith(
            ("weight_", "tensor_")
        ):
            raise _refuse(entry, f"{fqn!r} is pickled (a tensor subclass or custom object); refused")
        if f"{folder}{meta.path_name}" not in entries:
            raise _refuse(entry, f"missing (listed for {fqn!r})")
        tm = meta.tensor_meta
        try:
            dtype = deserialize_scalar_type(tm.dtype)
            size, stride = deserialize_size(tm.sizes), deserialize_stride(tm.strides)
            offset = deserialize_storage_offset(tm.storage_offset)
        except Exception as exc:  # symbolic sizes, unknown dtypes: the serde raises several types
            raise _refuse(entry, f"bad tensor metadata for {fqn!r} ({exc})") from None
        if min((*size, *stride, offset, 0)) < 0 or len(size) != len(stride):
            raise _refuse(entry, f"bad tensor metadata for {fqn!r}: sizes {size}, strides {stride}")
        info = entries[f"{folder}{meta.path_name}"]
        element = torch.empty((), dtype=dtype).element_size()
        needed = 0 if math.prod(size) == 0 else offset + 1 + sum(
            (n - 1) * s for n, s in zip(size, stride, strict=True)
        )
        if info.file_size % element or info.file_size < needed * element:
            raise _refuse(
                entry, f"{info.file_size} bytes, but {fqn!r} {tuple(size)} {dtype} needs {needed * element}"
            )
        data = _read(archive, info, limit)
        flat = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
        tensor = torch.as_strided(flat, size, stride, offset) if needed else torch.zeros(size, dtype=dtype)
        out[fqn] = nn.Parameter(tensor, requires_grad=False) if meta.is_param else tensor
    return out


def _check_graph(node: Any, entry: str) -> None:
    """Refuse node targets outside :data:`TARGET_PREFIXES` and unsafe shape expressions."""
    if isinstance(node, list):
        for item in node:
            _check_graph(item, entry)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "target" and isinstance(value, str):
            if not value.startswith(TARGET_PREFIXES) or value.startswith(REFUSED_TARGETS):
                raise _refuse(entry, f"node target {value!r} is not an ATen operator; refused")
        elif key == "expr_str" and isinstance(value, str):
            _check_expression(value, entry)
        else:
            _check_graph(value, entry)


def _check_expression(text: str, entry: str) -> None:
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _refuse(entry, f"shape expression {text[:80]!r}: unexpected {text[pos]!r}")
        token = match.group()
        if re.fullmatch(_NAME, token) and token not in SYMPY_NAMES:
            raise _refuse(entry, f"shape expression {text[:80]!r}: name {token!r} not allowed")
        if token.startswith("'") and ("__" in token or not re.fullmatch(r"'[a-z]+\d*'", token)):
            raise _refuse(entry, f"shape expression {text[:80]!r}: symbol {token} not allowed")
        pos = match.end()


def read_archive(
    path: Path,
    *,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """``(program JSON, weights, constants, entry name of the JSON)`` of a ``.pt2`` archive,
    every entry checked as the module docstring says (the graph too: :func:`check_program`)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a complete zip archive, truncated or corrupt ({exc})") from None
    with archive:
        root, entries = _entries(archive, path, max_entry_bytes, max_total_bytes)
        if "byteorder" in entries and _read(archive, entries["byteorder"], 16) != b"little":
            raise _refuse(f"{root}/byteorder", "only little-endian archives are read")
        models = sorted(n for n in entries if n.startswith("models/") and n.endswith(".json"))
        if len(models) != 1:
            raise ValueError(f"{path}: need exactly one models/<name>.json entry, found {models}")
        model_name = models[0][len("models/") : -len(".json")]
        entry = f"{root}/{models[0]}"
        program_json = _json(archive, entries[models[0]])
        check_program(program_json, entry)
        for name in sorted(n for n in entries if n.startswith(SAMPLE_INPUTS) and not n.endswith("/")):
            check_sample_inputs(_read(archive, entries[name], MAX_JSON_BYTES), f"{root}/{name}")
        weights = _tensors(archive, entries, root, "data/weights/",
                           f"{model_name}_weights_config.json", max_entry_bytes)  # fmt: skip
        constants = _tensors(archive, entries, root, "data/constants/",
                             f"{model_name}_constants_config.json", max_entry_bytes)  # fmt: skip
    return program_json, weights, constants, entry


def check_program(program_json: Any, entry: str) -> None:
    """ValueError naming ``entry`` unless ``program_json`` is an object whose node targets and
    shape expressions pass the checks of the module docstring."""
    if not isinstance(program_json, dict):
        raise _refuse(entry, "the exported program must be a JSON object")
    _check_graph(program_json, entry)


def program_from_json(
    program_json: dict,
    weights: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    entry: str,
) -> torch.export.ExportedProgram:
    """The ``ExportedProgram`` of a checked program JSON and its tensors (no example inputs)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program_json)
        return ExportedProgramDeserializer().deserialize(serialized, weights, constants, None)
    except Exception as exc:  # the deserializer raises many types for a malformed program
        raise _refuse(entry, f"cannot deserialize the exported program ({type(exc).__name__}: {exc})") from None


def load_program(
    path: Path,
    *,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> torch.export.ExportedProgram:
    """The ``ExportedProgram`` of a ``.pt2`` archive, read as the module docstring says.

    Nothing is unpickled; anything the checks refuse is a ValueError that names the archive
    entry (or the file, when it is not a complete zip)."""
    program_json, weights, constants, entry = read_archive(
        path, max_entry_bytes=max_entry_bytes, max_total_bytes=max_total_bytes
    )
    return program_from_json(program_json, weights, constants, entry)


def read_program(
    path: Path,
    *,
    max_entry_bytes: int = MAX_ENTRY_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The runnable module of a ``.pt2`` archive and its weights and constants by name
    (:func:`load_program`, then ``ExportedProgram.module()``)."""
    program = load_program(path, max_entry_bytes=max_entry_bytes, max_total_bytes=max_total_bytes)
    return program.module(), {**program.state_dict, **program.constants}


def _first_input(program: torch.export.ExportedProgram) -> torch.Tensor | None:
    """The example value (a fake tensor) of the program's first tensor user input, or None."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in names else None
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value
    return None


def program_input(program: torch.export.ExportedProgram) -> tuple[list[int] | None, str]:
    """``(per-sample shape, dtype name)`` of the program's first tensor input (the batch
    dimension dropped; None where a per-sample dimension is symbolic)."""
    value = _first_input(program)
    if value is None:
        return None, "float32"
    dims = list(value.shape[1:])
    shape = [int(d) for d in dims] if all(isinstance(d, int) for d in dims) else None
    return shape, str(value.dtype).removeprefix("torch.")


def has_dynamic_batch(program: torch.export.ExportedProgram) -> bool:
    """Whether the first input's batch dimension is symbolic (the program runs any batch)."""
    value = _first_input(program)
    return value is not None and not isinstance(value.shape[0], int)
