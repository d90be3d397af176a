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
                          float32, y to int64); loaded with ``allow_pickle=False``.
========================  ====================================================================

``idx:`` and ``npz:`` paths are resolved against the configured data roots, in order; a path
that ends up outside every root (``..``, an absolute path elsewhere, a symlink pointing out)
is refused. Loaded datasets are cached in-process, keyed by resolved path and file mtimes,
because every trial of a job reloads the same data. The cached tensors are shared: do not
modify them in place.
"""

from __future__ import annotations

import gzip
import threading
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
_CACHE_SIZE = 8


class DatasetError(ValueError):
    """A dataset reference that cannot be loaded; the message says why and what is allowed."""


@dataclass(frozen=True, eq=False)  # eq would compare tensors elementwise
class Dataset:
    """Train and validation splits as tensors: x float32 ``(N, *input_shape)``, y int64 ``(N,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def calibration_batch(self, n: int = 256, seed: int = 0) -> torch.Tensor:
        """``n`` training samples drawn at random (seeded): an example input for ops that trace
        the model or need calibration data (e.g. ``criterion: ga``)."""
        g = torch.Generator().manual_seed(seed)
        return self.x_train[torch.randperm(len(self.x_train), generator=g)[:n]]


def load_dataset(ref: str, data_roots: Sequence[Path] = ()) -> Dataset:
    """Load the dataset named by ``ref`` (see the module docstring for the schemes)."""
    kind, path = _locate(ref, data_roots)
    if kind == "digits":
        return _cached(("builtin:digits",), _load_digits)
    if kind == "npz":
        return _load_npz(path, ref)
    normalize = (MNIST_MEAN, MNIST_STD) if kind == "mnist" else None
    return _load_idx_dir(path, ref, normalize=normalize)


def check_reference(ref: str, data_roots: Sequence[Path] = ()) -> None:
    """Raise DatasetError if ``ref`` does not name loadable files; cheap, reads no data."""
    kind, path = _locate(ref, data_roots)
    if kind in ("mnist", "idx"):
        _idx_files(path, ref)


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
    train, val = order[:n_train], order[n_train:]
    return Dataset(x[train], y[train], x[val], y[val], num_classes=10)


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
        return _make_dataset(tensors, ref)

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


def _load_npz(path: Path, ref: str) -> Dataset:
    def load() -> Dataset:
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [name for name in IDX_FILES if name not in archive.files]
                if missing:
                    raise DatasetError(f"{ref}: missing array(s) {', '.join(missing)}")
                arrays = {name: archive[name] for name in IDX_FILES}
        except DatasetError:
            raise
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{ref}: cannot read as .npz without pickle: {exc}") from None
        tensors = {}
        for name, array in arrays.items():
            if name.startswith("y") and not np.issubdtype(array.dtype, np.integer):
                raise DatasetError(f"{ref}: {name} must hold integer class labels")
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise DatasetError(f"{ref}: {name} must be numeric, got {array.dtype}")
            dtype = torch.int64 if name.startswith("y") else torch.float32
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
        return _make_dataset(tensors, ref)

    return _cached(("npz", _file_stamp(path)), load)


# -- shared -----------------------------------------------------------------------------------


def _make_dataset(tensors: dict[str, torch.Tensor], ref: str) -> Dataset:
    """Check split shapes and labels; ``num_classes`` = largest label + 1."""
    for split in ("train", "val"):
        x, y = tensors[f"x_{split}"], tensors[f"y_{split}"]
        if y.ndim != 1 or x.ndim < 2 or len(x) != len(y) or len(y) == 0:
            raise DatasetError(
                f"{ref}: x_{split} must be (N, ...) and y_{split} (N,) with N > 0, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
    if tensors["x_train"].shape[1:] != tensors["x_val"].shape[1:]:
        raise DatasetError(f"{ref}: train and val samples differ in shape")
    labels = torch.cat([tensors["y_train"], tensors["y_val"]])
    if int(labels.min()) < 0:
        raise DatasetError(f"{ref}: labels must be non-negative")
    return Dataset(**tensors, num_classes=int(labels.max()) + 1)
