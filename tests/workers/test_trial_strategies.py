"""One trial through workers.trial.run_trial for each family of ops and fine-tune methods:
apply, fine-tune, write the packed checkpoint, reload it and measure it."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.checkpoint import load_checkpoint
from workers.trial import ModelSource, compute_baseline, run_trial

CONFIG = {"in_features": 64, "hidden": [64], "num_classes": 10}

CASES = {
    "prune+cluster+fp16/masked": (
        [{"op": "prune", "sparsity": 0.7}, {"op": "cluster", "bits": 3}, {"op": "quantize", "dtype": "float16"}],
        {"method": "masked", "epochs": 1},
    ),
    "int8/none": ([{"op": "quantize", "dtype": "int8"}], {"method": "none"}),
    "unify/admm": (
        [{"op": "unify", "block": [1, 4], "unify_ratio": 0.4, "prune_ratio": 0.2}],
        {"method": "admm", "epochs": 1},
    ),
    "neuron_prune ga/kd": (
        [{"op": "neuron_prune", "ratio": 0.25, "criterion": "ga"}],
        {"method": "kd", "epochs": 1},
    ),
    "prune/lc": ([{"op": "prune", "sparsity": 0.5}], {"method": "lc", "epochs": 1}),
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
    steps, finetune = CASES[case]
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
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
