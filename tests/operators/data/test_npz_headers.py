"""`inspect_npz` and the `npz:` loader check an `.npz` from its `.npy` headers: shapes, dtypes
(no pickle), the element cap and the zip entry sizes, before anything is inflated."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from operators.data.datasets import DatasetError, inspect_npz, load_dataset


def write_npz(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((30, 2, 3), dtype=np.float32),
        "y_train": rng.integers(0, 4, 30),
        "x_val": rng.random((6, 2, 3), dtype=np.float32),
        "y_val": np.array([0, 1, 2, 3, 4, 1]),
    }
    np.savez(path, **{**arrays, **overrides})
    return path


def test_inspect_npz_reads_shapes_and_classes_without_loading(tmp_path: Path) -> None:
    summary = inspect_npz(write_npz(tmp_path / "d.npz"))
    assert (summary.train_samples, summary.val_samples, summary.input_shape) == (30, 6, (2, 3))
    assert summary.num_classes == 5 and summary.dtypes["x_train"] == "<f4"


def test_the_element_cap_is_checked_from_the_headers(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    total = 30 * 6 + 30 + 6 * 6 + 6
    assert inspect_npz(path, max_elements=total).train_samples == 30
    with pytest.raises(DatasetError, match="limit"):
        inspect_npz(path, max_elements=total - 1)
    with pytest.raises(DatasetError, match="limit"):
        load_dataset(f"npz:{path.name}", [tmp_path], max_elements=total - 1)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"x_train": np.array([{}] * 30, dtype=object)}, "pickle"),
        ({"y_train": np.zeros(30, dtype=np.float32)}, "integer class labels"),
        ({"x_val": np.zeros((6, 3, 2), dtype=np.float32)}, "differ in shape"),
        ({"y_val": np.array([0, -1, 0, 0, 0, 0])}, "non-negative"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, overrides: dict, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        inspect_npz(write_npz(tmp_path / "d.npz", **overrides))


def test_a_member_larger_than_its_header_says_is_refused(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz")
    longer = open_member(path, "x_val.npy") + bytes(1000)
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("x_val.npy", longer)  # a second, longer x_val.npy shadows the first
    with pytest.raises(DatasetError, match="holds"):
        inspect_npz(path)


def open_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


def test_an_npz_with_x_test_and_y_test_has_a_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_test, y_test = rng.random((6, 2, 3), dtype=np.float32), np.array([0, 1, 2, 3, 4, 5])
    path = write_npz(tmp_path / "d.npz", x_test=x_test, y_test=y_test)
    assert inspect_npz(path).shapes["x_test"] == (6, 2, 3)
    dataset = load_dataset(f"npz:{path.name}", data_roots=[tmp_path])
    assert dataset.x_test.shape == (6, 2, 3) and dataset.y_test.tolist() == y_test.tolist()
    assert dataset.num_classes == 6  # labels of every split count


def test_an_npz_test_split_needs_both_arrays_of_the_train_sample_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DatasetError, match="come together"):
        inspect_npz(write_npz(tmp_path / "a.npz", x_test=rng.random((3, 2, 3))))
    with pytest.raises(DatasetError, match="train and test samples differ"):
        inspect_npz(write_npz(tmp_path / "b.npz", x_test=rng.random((3, 5)), y_test=np.zeros(3, dtype=np.int64)))
