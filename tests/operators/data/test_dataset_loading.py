"""Dataset references load the right tensors, and paths never leave the data roots."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.data import datasets
from operators.data.datasets import DatasetError, check_reference, clear_cache, load_dataset


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_idx_dir(directory: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 5, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 4, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 5, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 1], dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / name, array, gz)
    return arrays


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_digits_has_fixed_train_validation_and_test_splits(digits):
    # 80/20 train/test; a twelfth of the training part is the validation split
    assert digits.x_train.shape == (1317, 1, 8, 8) and digits.x_val.shape == (120, 1, 8, 8)
    assert digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    clear_cache()
    again = load_dataset("builtin:digits")
    assert torch.equal(again.y_train, digits.y_train) and torch.equal(again.x_val, digits.x_val)
    assert torch.equal(again.x_test, digits.x_test)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_round_trip(tmp_path, gz):
    arrays = write_idx_dir(tmp_path / "letters", gz)
    data = load_dataset("idx:letters", [tmp_path])
    assert data.input_shape == (1, 5, 4)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    # the t10k files are the test split; the validation split is cut from the training files
    together = torch.cat([data.x_train, data.x_val])
    assert len(data.y_val) == 1 and len(together) == len(expected)
    assert sorted(map(tuple, together.flatten(1).tolist())) == sorted(map(tuple, expected.flatten(1).tolist()))
    assert data.y_test.tolist() == [0, 1, 2, 3, 4, 1]
    assert data.num_classes == 5


def test_idx_missing_file_is_named(tmp_path):
    write_idx_dir(tmp_path / "d", gz=False)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("idx:d", [tmp_path])


def test_idx_wrong_magic_is_refused(tmp_path):
    write_idx_dir(tmp_path / "d", gz=False)
    labels = tmp_path / "d" / "train-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[3] = 0x03  # 2051 instead of 2049
    labels.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="magic number 2051, expected 2049"):
        load_dataset("idx:d", [tmp_path])


def test_npz_arrays_are_used_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_val = rng.normal(size=(10, 7)), rng.normal(size=(4, 7))
    np.savez(
        tmp_path / "d.npz",
        x_train=x_train,
        y_train=np.arange(10) % 3,
        x_val=x_val,
        y_val=np.array([0, 1, 5, 1]),
    )
    data = load_dataset("npz:d.npz", [tmp_path])
    assert data.input_shape == (7,) and data.num_classes == 6
    assert torch.equal(data.x_train, torch.from_numpy(x_train).float())
    assert data.y_train.dtype == torch.int64


def test_npz_missing_array_and_pickled_objects_are_refused(tmp_path):
    np.savez(tmp_path / "short.npz", x_train=np.zeros((2, 3)), y_train=np.zeros(2, int))
    with pytest.raises(DatasetError, match="missing array.*x_val"):
        load_dataset("npz:short.npz", [tmp_path])
    objects = np.array([{"a": 1}, None], dtype=object)
    np.savez(
        tmp_path / "obj.npz",
        x_train=objects,
        y_train=np.zeros(2, int),
        x_val=objects,
        y_val=np.zeros(2, int),
    )
    with pytest.raises(DatasetError, match="pickle"):
        load_dataset("npz:obj.npz", [tmp_path])


def test_paths_resolve_against_roots_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    write_idx_dir(second / "set", gz=True)
    assert len(load_dataset("idx:set", [first, second]).y_train) == 11  # + 1 validation sample
    absolute_inside = str(second / "set")
    assert len(load_dataset(f"idx:{absolute_inside}", [first, second]).y_train) == 11


@pytest.fixture
def root_and_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    write_idx_dir(outside, gz=False)
    return root, outside


@pytest.mark.parametrize("ref", ["idx:../outside", "idx:sub/../../outside", "idx:ABS", "idx:link"])
def test_a_path_leaving_the_roots_is_refused(root_and_outside, ref):
    root, outside = root_and_outside
    (root / "link").symlink_to(outside)
    ref = ref.replace("ABS", str(outside))
    with pytest.raises(DatasetError, match="leaves the configured data roots"):
        load_dataset(ref, [root])


def test_missing_path_and_no_roots_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("idx:nothing-here", [tmp_path])
    with pytest.raises(DatasetError, match="no data roots"):
        load_dataset("npz:x.npz")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            "http://example.com/x.npz",
            "unknown dataset scheme 'http'; allowed schemes: builtin, idx, npz",
        ),
        ("mnist", "allowed schemes: builtin, idx, npz"),
        ("builtin:cifar10", "unknown builtin dataset 'cifar10'; allowed: mnist, digits"),
    ],
)
def test_unknown_references_list_what_is_allowed(ref, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(ref)


def test_cache_returns_the_same_object_until_a_file_changes(tmp_path):
    write_idx_dir(tmp_path / "d", gz=False)
    first = load_dataset("idx:d", [tmp_path])
    assert load_dataset("idx:d", [tmp_path]) is first
    labels = tmp_path / "d" / "train-labels-idx1-ubyte"
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_dataset("idx:d", [tmp_path]) is not first


def test_builtin_mnist_loads_with_the_standard_normalisation():
    mnist = load_dataset("builtin:mnist")
    assert mnist.x_train.shape == (55000, 1, 28, 28) and mnist.x_val.shape == (5000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28) and mnist.num_classes == 10
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # t10k, in file order
    everything = torch.cat([mnist.x_train, mnist.x_val])
    assert abs(float(everything.mean())) < 1e-3 and abs(float(everything.std()) - 1) < 1e-2


def test_check_reference_validates_without_loading(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "d", gz=True)
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")  # loading it would fail

    def refuse(*args, **kwargs):
        raise AssertionError("check_reference read the data")

    for loader in ("read_idx", "_load_idx_dir", "_load_npz", "_load_digits", "_cached"):
        monkeypatch.setattr(datasets, loader, refuse)
    check_reference("idx:d", [tmp_path])
    check_reference("builtin:mnist")
    check_reference("builtin:digits")
    with pytest.raises(DatasetError, match="not a zip"):  # headers checked, nothing loaded
        check_reference("npz:junk.npz", [tmp_path])
    monkeypatch.undo()
    with pytest.raises(DatasetError):
        load_dataset("npz:junk.npz", [tmp_path])
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="missing file t10k-images-idx3-ubyte"):
        check_reference("idx:d", [tmp_path])
    with pytest.raises(DatasetError, match="leaves the configured data roots"):
        check_reference("npz:../x.npz", [tmp_path / "d"])
    with pytest.raises(DatasetError, match="allowed schemes"):
        check_reference("s3:bucket/x")
