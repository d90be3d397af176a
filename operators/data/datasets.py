"""Dataset references (``builtin:mnist``, ``idx:<dir>``, ...) loaded into in-memory tensors.

A dataset is small enough to hold in memory: a train split for fine-tuning and a validation
split for the metrics. :func:`load_dataset` understands these references:

========================  ====================================================================
``builtin:mnist``         the MNIST idx files shipped in ``operators/data/mnist`` (60000 train,
                          10000 val = t10k), shape (1, 28, 28), scaled to [0, 1] and normalised
                          with mean 0.1307, std 0.3081 (the usual torchvision transform).
``builtin:digits``        scikit-learn's 8x8 digits, shape (1, 8, 8), pixel / 16, a fixed
                          seeded split: 80 % train (1437), 20 % val (360).
``idx:<dir>``             any folder in MNIST's idx format (``train-images-idx3-ubyte[.gz]``,
                          ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``): Fashion-MNIST, KMNIST,
                          EMNIST. Images become (1, H, W) scaled to [0, 1], not normalised.
``npz:<file>``            arrays ``x_train, y_train, x_val, y_val`` used as they are (x cast to
                          float32, y to int64); loaded with ``allow_pickle=False`` after its
                          ``.npy`` headers are checked (:func:`inspect_npz`).
========================  ====================================================================

``idx:`` and ``npz:`` paths are resolved against the configured data roots, in order; a path
that ends up outside every root (``..``, an absolute path elsewhere, a symlink pointing out)
is refused. Loaded datasets are cached in-process, keyed by resolved path and file mtimes,
because every trial of a job reloads the same data. The cached tensors are shared: do not
modify them in place.
"""

from __future__ import annotations

import functools
import gzip
import math
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_DIR = Path(__file__).resolve().parent / "mnist"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SCHEMES = ("builtin", "idx", "npz")
BUILTINS = ("mnist", "digits")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_val": "t10k-images-idx3-ubyte",
    "y_val": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 2051, 1: 2049}  # number of dimensions -> magic number (unsigned bytes)
DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8
# Datasets that come with only train and test files (MNIST's idx files, the digits split) keep
# the test files as the test split and cut this fraction of the training set (seeded) as the
# validation split the search selects on: 5,000 of MNIST's 60,000, as Condensa does.
VALIDATION_FRACTION = 1 / 12
# An ``.npz`` may add a test split (reported on, never selected on) to its four arrays.
NPZ_TEST_ARRAYS = ("x_test", "y_test")
VALIDATION_SEED = 0
_CACHE_SIZE = 8


class DatasetError(ValueError):
    """A dataset reference that cannot be loaded; the message says why and what is allowed."""


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class Dataset:
    """Train, validation and (optional) test splits as tensors: x float32 ``(N, *input_shape)``,
    y int64 ``(N,)``. The search selects on validation; the test split only reports."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of split ``"train"``, ``"val"`` or ``"test"`` (ValueError if absent)."""
        x, y = getattr(self, f"x_{name}", None), getattr(self, f"y_{name}", None)
        if x is None or y is None:
            raise ValueError(f"split: the dataset has no {name!r} split")
        return x, y

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def calibration_batch(self, n: int = 256, seed: int = 0) -> torch.Tensor:
        """``n`` training samples drawn at random (seeded): an example input for ops that trace
        the model or need calibration data (e.g. ``criterion: ga``)."""
        g = torch.Generator().manual_seed(seed)
        return self.x_train[torch.randperm(len(self.x_train), generator=g)[:n]]


def load_dataset(
    ref: str, data_roots: Sequence[Path] = (), max_elements: int | None = None
) -> Dataset:
    """Load the dataset named by ``ref`` (see the module docstring for the schemes).

    An ``npz:`` file's headers are checked first (see `inspect_npz`): more than
    ``max_elements`` elements in all (None: no limit) is a DatasetError before anything is
    inflated."""
    kind, path = _locate(ref, data_roots)
    if kind == "digits":
        return _cached(("builtin:digits",), _load_digits)
    if kind == "npz":
        return _load_npz(path, ref, max_elements)
    normalize = (MNIST_MEAN, MNIST_STD) if kind == "mnist" else None
    return _load_idx_dir(path, ref, normalize=normalize)


def check_reference(
    ref: str, data_roots: Sequence[Path] = (), max_elements: int | None = None
) -> None:
    """Raise DatasetError if ``ref`` does not name loadable files, or names an ``npz:`` file
    that :func:`inspect_npz` refuses (not a zip, pickled or missing arrays, more than
    ``max_elements`` elements); cheap: of an ``.npz`` only the zip directory, the ``.npy``
    headers and the labels are read, and no samples are loaded."""
    kind, path = _locate(ref, data_roots)
    if kind in ("mnist", "idx"):
        _idx_files(path, ref)
    if kind == "npz":
        inspect_npz(path, max_elements, ref, verify=False)


def _locate(ref: str, data_roots: Sequence[Path]) -> tuple[str, Path]:
    """``(kind, path)`` for a reference: kind is mnist, digits, idx or npz."""
    if not isinstance(ref, str) or ":" not in ref:
        raise DatasetError(
            f"dataset reference {ref!r} must look like 'scheme:value'; allowed schemes: "
            + ", ".join(SCHEMES)
        )
    scheme, _, value = ref.partition(":")
    if scheme == "builtin":
        if value not in BUILTINS:
            raise DatasetError(f"unknown builtin dataset {value!r}; allowed: {', '.join(BUILTINS)}")
        return value, MNIST_DIR
    if scheme not in SCHEMES:
        raise DatasetError(
            f"unknown dataset scheme {scheme!r}; allowed schemes: {', '.join(SCHEMES)}"
        )
    path = resolve_in_roots(value, data_roots, ref)
    if scheme == "idx" and not path.is_dir():
        raise DatasetError(f"{ref}: not a directory")
    if scheme == "npz" and not path.is_file():
        raise DatasetError(f"{ref}: not a file")
    return scheme, path


def resolve_in_roots(path: str, data_roots: Sequence[Path], ref: str = "") -> Path:
    """The first existing ``root / path`` (symlinks and ``..`` resolved) that lies inside its root.

    Raises DatasetError if the path leaves every root, or exists in none of them.
    """
    ref = ref or path
    if not path:
        raise DatasetError(f"{ref}: empty path")
    if not data_roots:
        raise DatasetError(f"{ref}: no data roots are configured, so no path can be read")
    inside_any = False
    for root in data_roots:
        root = Path(root).resolve()
        candidate = (root / path).resolve()
        if not candidate.is_relative_to(root):
            continue
        inside_any = True
        if candidate.exists():
            return candidate
    if not inside_any:
        raise DatasetError(f"{ref}: path leaves the configured data roots; refused")
    raise DatasetError(f"{ref}: not found in the data roots")


# -- cache ------------------------------------------------------------------------------------

_cache: OrderedDict[Hashable, Dataset] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: Hashable, load: Callable[[], Dataset]) -> Dataset:
    """Return the cached dataset for ``key``, loading it (outside the lock) on a miss."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    dataset = load()
    with _cache_lock:
        _cache[key] = dataset
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return dataset


def clear_cache() -> None:
    """Forget every cached dataset."""
    with _cache_lock:
        _cache.clear()


def _file_stamp(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


# -- builtin:digits ---------------------------------------------------------------------------


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y)))
    n_train = int(DIGITS_TRAIN_FRACTION * len(y))
    train, test = order[:n_train], order[n_train:]
    return hold_out_validation(Dataset(x[train], y[train], x[test], y[test], num_classes=10))


def hold_out_validation(dataset: Dataset) -> Dataset:
    """``dataset``'s validation split becomes its test split, and a seeded
    :data:`VALIDATION_FRACTION` of its training samples becomes the validation split."""
    n = len(dataset.y_train)
    order = torch.from_numpy(np.random.default_rng(VALIDATION_SEED).permutation(n))
    n_val = max(1, round(VALIDATION_FRACTION * n))
    val, train = order[:n_val], order[n_val:]
    return Dataset(
        dataset.x_train[train], dataset.y_train[train], dataset.x_train[val],
        dataset.y_train[val], dataset.num_classes, x_test=dataset.x_val, y_test=dataset.y_val,
    )  # fmt: skip


# -- idx --------------------------------------------------------------------------------------


def _find_idx_file(directory: Path, stem: str, ref: str) -> Path:
    for name in (stem, stem + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    raise DatasetError(f"{ref}: missing file {stem}[.gz]")


def _idx_files(directory: Path, ref: str) -> dict[str, Path]:
    """The four idx files of a directory (plain or .gz), keyed x_train, y_train, x_val, y_val."""
    return {key: _find_idx_file(directory, stem, ref) for key, stem in IDX_FILES.items()}


def _load_idx_dir(
    directory: Path, ref: str, normalize: tuple[float, float] | None = None
) -> Dataset:
    files = _idx_files(directory, ref)
    key = ("idx", normalize, *(_file_stamp(path) for path in files.values()))

    def load() -> Dataset:
        arrays = {
            name: read_idx(path, ndim=3 if name.startswith("x") else 1, ref=ref)
            for name, path in files.items()
        }
        for split in ("train", "val"):
            if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
                raise DatasetError(f"{ref}: {split} images and labels differ in count")
        tensors = {}
        for name, array in arrays.items():
            if name.startswith("x"):
                x = torch.from_numpy(array).unsqueeze(1).to(torch.float32).div_(255.0)
                if normalize is not None:
                    x.sub_(normalize[0]).div_(normalize[1])
                tensors[name] = x
            else:
                tensors[name] = torch.from_numpy(array.astype(np.int64))
        return hold_out_validation(_make_dataset(tensors, ref))  # t10k is the test split

    return _cached(key, load)


def read_idx(path: Path, ndim: int, ref: str = "") -> np.ndarray:
    """Read an unsigned-byte idx file (plain or .gz) with ``ndim`` dimensions into a uint8 array.

    The header is big-endian: magic (2051 for images, 2049 for labels), then one uint32 per
    dimension; the data follows row-major.
    """
    ref = ref or str(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{ref}: cannot read {path.name}: {exc}") from None
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise DatasetError(f"{ref}: {path.name} is too short for an idx header")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != _IDX_MAGIC[ndim]:
        raise DatasetError(
            f"{ref}: {path.name} has magic number {int(header[0])}, expected {_IDX_MAGIC[ndim]}"
        )
    shape = tuple(int(d) for d in header[1:])
    if len(raw) - header_len != int(np.prod(shape)):
        raise DatasetError(
            f"{ref}: {path.name} holds {len(raw) - header_len} bytes of data, "
            f"its header says {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape).copy()


# -- npz --------------------------------------------------------------------------------------

_NPZ_KINDS = {"x": "biuf", "y": "iu"}  # bool/int/uint/float samples, integer labels
_NPZ_MAX_MEMBERS = 64  # an .npz dataset has 4 arrays; a central directory of millions is refused
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class NpzSummary:
    """What the headers of an ``.npz`` dataset declare, checked: shapes and dtypes of
    ``x_train, y_train, x_val, y_val`` and the number of classes of its labels."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shapes["x_train"][1:]

    @property
    def train_samples(self) -> int:
        return self.shapes["y_train"][0]

    @property
    def val_samples(self) -> int:
        return self.shapes["y_val"][0]


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    data_offset: int  # bytes of .npy header before the data

    @property
    def count(self) -> int:
        return math.prod(self.shape)


_NPZ_ERRORS = (
    OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError
)  # fmt: skip


def inspect_npz(
    path: Path, max_elements: int | None = None, ref: str = "", verify: bool = True
) -> NpzSummary:
    """Check an ``.npz`` dataset without holding its arrays in memory; raise DatasetError.

    From the zip's directory and each member's ``.npy`` header: the four arrays exist, no
    object dtype (no pickle), numeric samples and integer labels, split shapes that agree,
    at most ``max_elements`` elements in all, and each member's declared uncompressed size
    equal to its header plus shape times itemsize (so a zip bomb is refused before it is
    inflated). Then the labels, and with ``verify`` the samples too, are streamed through in
    1 MiB chunks (zipfile checks each member's CRC at its end): labels must be non-negative,
    their maximum gives ``num_classes``; nothing bigger than a chunk is ever held. Results
    are cached per file (path, mtime, size).
    """
    return _inspect_cached(_file_stamp(path), max_elements, ref or f"npz:{path.name}", verify)


@functools.lru_cache(maxsize=1024)
def _inspect_cached(
    stamp: tuple[str, int, int], max_elements: int | None, ref: str, verify: bool
) -> NpzSummary:
    try:
        with zipfile.ZipFile(_checked_zip(Path(stamp[0]), ref)) as archive:
            members = _npz_members(archive, max_elements, ref)
            low, high = 0, -1
            for name, member in members.items():
                if verify or name.startswith("y"):
                    lo, hi = _stream_member(archive, member, labels=name.startswith("y"))
                    low, high = min(low, lo), max(high, hi)
    except DatasetError:
        raise
    except _NPZ_ERRORS as exc:
        raise DatasetError(f"{ref}: not a readable .npz without pickle: {exc}") from None
    if low < 0:
        raise DatasetError(f"{ref}: labels must be non-negative")
    return NpzSummary(
        shapes={name: m.shape for name, m in members.items()},
        dtypes={name: m.dtype.str for name, m in members.items()},
        num_classes=high + 1,
    )


def _checked_zip(path: Path, ref: str) -> Path:
    """``path`` if it is a zip whose central directory is small enough to read."""
    with open(path, "rb") as fh:
        end = zipfile._EndRecData(fh)  # the end-of-central-directory record, read from the tail
    if end is None:
        raise DatasetError(f"{ref}: not a zip file (an .npz is one); empty or truncated upload?")
    if end[zipfile._ECD_ENTRIES_TOTAL] > _NPZ_MAX_MEMBERS:
        raise DatasetError(
            f"{ref}: the archive lists {end[zipfile._ECD_ENTRIES_TOTAL]} members, "
            f"at most {_NPZ_MAX_MEMBERS} are read"
        )
    return path


def _npz_members(
    archive: zipfile.ZipFile, max_elements: int | None, ref: str
) -> dict[str, _Member]:
    """The four arrays' headers, checked (see `inspect_npz`); reads only the headers."""
    names = set(archive.namelist())
    missing = [name for name in IDX_FILES if f"{name}.npy" not in names]
    if missing:
        raise DatasetError(f"{ref}: missing array(s) {', '.join(missing)}")
    test = [name for name in NPZ_TEST_ARRAYS if f"{name}.npy" in names]
    if test and len(test) != len(NPZ_TEST_ARRAYS):
        raise DatasetError(f"{ref}: x_test and y_test come together; only {test[0]} is there")
    members = {name: _read_member(archive, name, ref) for name in (*IDX_FILES, *test)}
    total = sum(m.count for m in members.values())
    if max_elements is not None and total > max_elements:
        raise DatasetError(
            f"{ref}: the arrays declare {total} elements, more than the limit of {max_elements}"
        )
    _check_split_shapes({name: m.shape for name, m in members.items()}, ref)
    return members


def _read_member(archive: zipfile.ZipFile, name: str, ref: str) -> _Member:
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise DatasetError(f"{ref}: {name} has .npy format {version}; 1.0 and 2.0 are read")
        offset = fh.tell()
    if dtype.hasobject or dtype.kind not in _NPZ_KINDS[name[0]]:
        what = "integer class labels" if name[0] == "y" else "numbers (bool, int, uint, float)"
        raise DatasetError(f"{ref}: {name} must hold {what}, got dtype {dtype} (no pickle)")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise DatasetError(f"{ref}: {name} has an invalid shape {shape}")
    member = _Member(info, tuple(shape), dtype, offset)
    expected = offset + member.count * dtype.itemsize
    if info.file_size != expected:
        raise DatasetError(
            f"{ref}: {name} declares shape {member.shape} of {dtype} ({expected} bytes with its "
            f"header) but its zip entry holds {info.file_size} bytes"
        )
    return member


def _stream_member(archive: zipfile.ZipFile, member: _Member, labels: bool) -> tuple[int, int]:
    """Read the member to its end in chunks (zipfile checks the CRC there); for labels, their
    (min, max), else (0, -1)."""
    low, high = 0, -1
    step = max(1, _CHUNK_BYTES // member.dtype.itemsize) * member.dtype.itemsize
    with archive.open(member.info) as fh:
        fh.read(member.data_offset)
        while chunk := fh.read(step):
            if labels:
                values = np.frombuffer(chunk, dtype=member.dtype)
                low, high = min(low, int(values.min())), max(high, int(values.max()))
    return low, high


def _load_npz(path: Path, ref: str, max_elements: int | None = None) -> Dataset:
    def load() -> Dataset:
        try:
            with zipfile.ZipFile(_checked_zip(path, ref)) as archive:
                _npz_members(archive, max_elements, ref)  # before anything is inflated
            with np.load(path, allow_pickle=False) as archive:
                names = [n for n in (*IDX_FILES, *NPZ_TEST_ARRAYS) if n in archive.files]
                arrays = {name: archive[name] for name in names}
        except DatasetError:
            raise
        except _NPZ_ERRORS as exc:
            raise DatasetError(f"{ref}: cannot read as .npz without pickle: {exc}") from None
        dtypes = {name: torch.int64 if name[0] == "y" else torch.float32 for name in arrays}
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(array)).to(dtypes[name])
            for name, array in arrays.items()
        }
        return _make_dataset(tensors, ref)

    return _cached(("npz", _file_stamp(path), max_elements), load)


# -- shared -----------------------------------------------------------------------------------


def _check_split_shapes(shapes: dict[str, tuple[int, ...]], ref: str) -> None:
    """x_<split> (N, ...) and y_<split> (N,) with N > 0; train, val (and test) samples alike."""
    for split in ("train", "val", "test")[: 3 if "x_test" in shapes else 2]:
        x, y = shapes[f"x_{split}"], shapes[f"y_{split}"]
        if len(y) != 1 or len(x) < 2 or x[0] != y[0] or y[0] == 0:
            raise DatasetError(
                f"{ref}: x_{split} must be (N, ...) and y_{split} (N,) with N > 0, "
                f"got {x} and {y}"
            )
    if shapes["x_train"][1:] != shapes["x_val"][1:]:
        raise DatasetError(f"{ref}: train and val samples differ in shape")
    if "x_test" in shapes and shapes["x_test"][1:] != shapes["x_train"][1:]:
        raise DatasetError(f"{ref}: train and test samples differ in shape")


def _make_dataset(tensors: dict[str, torch.Tensor], ref: str) -> Dataset:
    """Check split shapes and labels; ``num_classes`` = largest label + 1."""
    _check_split_shapes({name: tuple(t.shape) for name, t in tensors.items()}, ref)
    labels = torch.cat([t for n, t in tensors.items() if n.startswith("y_")])
    if int(labels.min()) < 0:
        raise DatasetError(f"{ref}: labels must be non-negative")
    return Dataset(**tensors, num_classes=int(labels.max()) + 1)
