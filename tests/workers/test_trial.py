"""One trial through workers.trial.run_trial for each family of ops and fine-tune methods:
apply, fine-tune, write the packed checkpoint, reload it and measure it."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators import load_checkpoint
from workers.trial import ModelSource, compute_baseline, run_trial

CONFIG = {"in_features": 64, "hidden": [64], "num_classes": 10}

# case -> (steps, fine-tuning, what the manifest must show: module kinds, and per tensor
# the encoding or storage dtype that proves the op was stored as such)
CASES = {
    "prune+cluster+fp16/masked": (
        [{"op": "prune", "sparsity": 0.7}, {"op": "cluster", "bits": 3}, {"op": "quantize", "dtype": "float16"}],
        {"method": "masked", "epochs": 1},
        {"kinds": {"fc1": "clustered", "fc2": "clustered"}, "dtypes": {"fc1.codebook": "float16"}},
    ),
    "int8/none": (
        [{"op": "quantize", "dtype": "int8"}],
        {"method": "none"},
        {"kinds": {"fc1": "int8", "fc2": "int8"}, "dtypes": {"fc1.qweight": "int8"}},
    ),
    "unify/admm": (
        [{"op": "unify", "block": [1, 4], "unify_ratio": 0.4, "prune_ratio": 0.2}],
        {"method": "admm", "epochs": 1},
        {"kinds": {"fc1": "unified", "fc2": "unified"}, "dtypes": {}},
    ),
    "neuron_prune ga/kd": (
        [{"op": "neuron_prune", "ratio": 0.25, "criterion": "ga"}],
        {"method": "kd", "epochs": 1},
        {"kinds": {"fc1": "linear", "fc2": "linear"}, "shapes": {"fc1.weight": [48, 64]}},
    ),
    "prune/lc": (
        [{"op": "prune", "sparsity": 0.5}],
        {"method": "lc", "epochs": 1},
        {"kinds": {}, "encodings": {"fc1.weight": ("bitmask", "index")}},
    ),
    "gradual prune+cluster/masked": (
        [
            {"op": "prune", "sparsity": 0.9, "schedule": {"stages": 2}, "finetune": {"epochs": 0.5}},
            {"op": "cluster", "bits": 3},
        ],
        {"method": "masked", "epochs": 0.5},
        {"kinds": {"fc1": "clustered", "fc2": "clustered"}, "dtypes": {"fc1.codebook": "float32"}},
    ),
    "lowrank/masked": (
        [{"op": "lowrank", "rank": 8}],
        {"method": "masked", "epochs": 1},
        {"kinds": {"fc1": "lowrank"}, "shapes": {"fc1.first.weight": [8, 64]}},
    ),
}


@pytest.fixture(scope="module")
def baseline(digits_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    source = ModelSource("mlp", CONFIG, digits_model)
    path = tmp_path_factory.mktemp("baseline") / "dense.safetensors"
    return source, compute_baseline(source, "builtin:digits", [], path)


@pytest.mark.parametrize("case", list(CASES))
def test_trial_runs_and_its_checkpoint_reloads(case: str, baseline, tmp_path: Path) -> None:  # noqa: ANN001
    import torch

    source, base = baseline
    steps, finetune, expected = CASES[case]
    path = tmp_path / "trial.safetensors"
    metrics = run_trial(
        source=source,
        dataset_ref="builtin:digits",
        data_roots=[],
        steps=steps,
        finetune_spec=finetune,
        seed=0,
        baseline=base,
        checkpoint_path=path,
        device=torch.device("cpu"),
    )
    assert metrics["size_bytes"] == path.stat().st_size
    assert metrics["compression_ratio"] > 1.0, metrics
    assert metrics["accuracy"] > 0.5, metrics
    model, manifest = load_checkpoint(path)
    assert manifest["architecture"] == "mlp"
    assert {n: r["kind"] for n, r in manifest["modules"].items()} == expected["kinds"]
    tensors = manifest["tensors"]
    for name, dtype in expected.get("dtypes", {}).items():
        assert tensors[name]["dtype"] == dtype, (name, tensors[name])
    for name, shape in expected.get("shapes", {}).items():
        assert tensors[name]["shape"] == shape, (name, tensors[name])
    for name, encodings in expected.get("encodings", {}).items():
        assert tensors[name]["encoding"] in encodings, (name, tensors[name])
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_an_npz_dataset_over_the_element_limit_is_refused_before_it_is_loaded(
    digits_model: Path, tmp_path: Path
) -> None:
    import numpy as np

    from operators.data.datasets import DatasetError

    arrays = {"x_train": np.zeros((40, 64), np.float32), "y_train": np.arange(40) % 10,
              "x_val": np.zeros((10, 64), np.float32), "y_val": np.arange(10)}  # fmt: skip
    np.savez(tmp_path / "d.npz", **arrays)  # 3,250 elements
    source = ModelSource("mlp", CONFIG, digits_model)
    with pytest.raises(DatasetError, match="more than the limit of 3000"):
        compute_baseline(source, "npz:d.npz", [tmp_path], tmp_path / "b.safetensors",
                         max_dataset_elements=3000)  # fmt: skip
    assert compute_baseline(source, "npz:d.npz", [tmp_path], tmp_path / "b.safetensors",
                            max_dataset_elements=4000)["size_bytes"] > 0  # fmt: skip
