"""Evaluate the LeNet-300-100 / MNIST landscapes once, with the project's real operators.

Writes ``bench/search/data/lenet300_mnist.json``: a trained baseline, then

* ``global``: global magnitude pruning at a grid of sparsities (the 1-D problem), and
* ``layers``: per-layer sparsities of fc1, fc2, fc3 (``prune`` with ``include`` and
  ``scope: layer``), each stored in float32 and float16 (the 4-parameter problem),

each point pruned, fine-tuned with the compression held (``masked``, a short epoch), packed
with :func:`operators.checkpoint.save_checkpoint` and evaluated. Takes about 10-15 minutes on
two CPU cores; the benchmark itself only reads the JSON. Run::

    .venv/bin/python -m bench.search.make_landscape

``--staged`` instead writes ``bench/search/data/lenet300_mnist_staged.json``: the default
space's ``deep-compression`` strategy (prune in 3 cubic stages, cluster to ``B`` bits, float16)
run with :func:`operators.run_strategy` from bench/record's cached baseline, on a grid of
sparsity x bits; per point the validation accuracy, the checkpoint's bytes and the measured
wall seconds of the whole evaluation (apply, fine-tune, save, evaluate). Sparsities are run
coarse to fine, so a run cut short still covers the whole range. ::

    .venv/bin/python -m bench.search.make_landscape --staged
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from operators.core.model import CompressedModel
from operators.core.strategy import apply_strategy
from operators.data.datasets import load_dataset
from operators.format.checkpoint import save_checkpoint, save_dense_checkpoint
from operators.metrics import evaluate
from operators.models.zoo import build_model
from operators.train.finetune import finetune
from operators.train.loop import train
from operators.train.staged import run_strategy

DATA = Path(__file__).parent / "data" / "lenet300_mnist.json"
STAGED_DATA = Path(__file__).parent / "data" / "lenet300_mnist_staged.json"
STAGED_SPARSITIES = [0.8, 0.99, 0.9, 0.95, 0.97, 0.85, 0.93, 0.96, 0.98]  # coarse to fine
STAGED_BITS = [2, 3, 4, 5]
STAGED_FINETUNE = {"method": "masked", "epochs": 1, "lr": 1e-3, "batch_size": 128}
ARCHITECTURE, CONFIG = "lenet-300-100", {}
GLOBAL_SPARSITIES = [
    0.5,
    0.7,
    0.8,
    0.85,
    0.9,
    0.92,
    0.94,
    0.95,
    0.96,
    0.97,
    0.975,
    0.98,
    0.985,
    0.99,
    0.993,
    0.996,
    0.998,
]
LAYER_GRID = {
    "fc1": [0.5, 0.8, 0.9, 0.95, 0.98, 0.995],
    "fc2": [0.5, 0.8, 0.9, 0.95, 0.98],
    "fc3": [0.3, 0.6, 0.8, 0.9],
}


def _measure(cm: CompressedModel, dataset, folder: Path, name: str) -> dict[str, float]:
    path = folder / f"{name}.safetensors"
    size = save_checkpoint(cm, path, architecture=ARCHITECTURE, config=CONFIG)
    return {**evaluate(cm.model, dataset), "size_bytes": size}


def _baseline(model, dataset, folder: Path, start: float) -> dict[str, float]:
    """The dense model's metrics and checkpoint bytes, printed with the seconds since ``start``."""
    size = save_dense_checkpoint(
        model, folder / "dense.safetensors", architecture=ARCHITECTURE, config=CONFIG
    )
    baseline = {**evaluate(model, dataset), "size_bytes": size}
    print("baseline", baseline, f"{time.perf_counter() - start:.0f}s", flush=True)
    return baseline


def _float16(cm: CompressedModel) -> CompressedModel:
    """A copy of the same fine-tuned weights and masks, stored (and run) in float16 values."""
    model = copy.deepcopy(cm.model)
    half = CompressedModel(
        model=model,
        masks=dict(cm.masks),
        value_dtypes={name: torch.float16 for name, _ in model.named_parameters()},
    )
    half.enforce()
    return half


def _point(model, dataset, steps, epochs, seed) -> CompressedModel:
    cm = apply_strategy(model, steps)
    finetune(cm, dataset, method="masked", epochs=epochs, seed=seed, schedule="cosine")
    return cm


def staged_steps(sparsity: float, bits: int) -> list[dict]:
    """The default space's ``deep-compression`` strategy at one point."""
    return [
        {"op": "prune", "sparsity": sparsity, "schedule": {"stages": 3, "ramp": "cubic"}},
        {"op": "cluster", "bits": bits},
        {"op": "quantize", "dtype": "float16"},
    ]


def staged(out: Path) -> None:
    """Measure the staged ``deep-compression`` landscape (see the module docstring)."""
    from safetensors.torch import load_file

    from bench.record.__main__ import baseline

    dataset = load_dataset("builtin:mnist")
    start = time.perf_counter()
    model = build_model(ARCHITECTURE, CONFIG)
    model.load_state_dict(load_file(str(baseline(ARCHITECTURE, 6.0, 0))))
    result: dict = {
        "model": ARCHITECTURE,
        "dataset": "builtin:mnist",
        "baseline_source": "bench.record baseline(lenet-300-100, epochs=6.0, seed=0)",
        "finetune": STAGED_FINETUNE,
        "threads": torch.get_num_threads(),
        "points": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["baseline"] = _baseline(model, dataset, folder, start)
        for s, bits in itertools.product(STAGED_SPARSITIES, STAGED_BITS):
            began = time.perf_counter()
            cm = run_strategy(model, staged_steps(s, bits), dataset, STAGED_FINETUNE, seed=0)
            row = {"sparsity": s, "bits": bits, **_measure(cm, dataset, folder, "s")}
            row["eval_seconds"] = time.perf_counter() - began
            result["points"].append(row)
            print("staged", row, f"{time.perf_counter() - start:.0f}s", flush=True)
            out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-epochs", type=float, default=8)
    parser.add_argument("--finetune-epochs", type=float, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--staged", action="store_true", help="the staged landscape instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.staged:
        staged(args.out or STAGED_DATA)
        return
    args.out = args.out or DATA
    torch.manual_seed(0)
    dataset = load_dataset("builtin:mnist")
    model = build_model(ARCHITECTURE, CONFIG)
    start = time.perf_counter()
    train(model, dataset, epochs=args.baseline_epochs, seed=0, schedule="cosine")
    result: dict = {
        "model": ARCHITECTURE,
        "dataset": "builtin:mnist",
        "baseline_epochs": args.baseline_epochs,
        "finetune": {
            "method": "masked",
            "epochs": args.finetune_epochs,
            "lr": 1e-3,
            "schedule": "cosine",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result["baseline"] = _baseline(model, dataset, folder, start)

        result["global"] = []
        for s in GLOBAL_SPARSITIES:
            cm = _point(
                model, dataset, [{"op": "prune", "sparsity": s}], args.finetune_epochs, seed=1
            )
            row = {"sparsity": s, **_measure(cm, dataset, folder, "g")}
            result["global"].append(row)
            print("global", row, f"{time.perf_counter() - start:.0f}s", flush=True)
        args.out.write_text(json.dumps(result, indent=1))

        result["layers"] = []
        for s1, s2, s3 in itertools.product(*LAYER_GRID.values()):
            steps = [
                {"op": "prune", "sparsity": s, "scope": "layer", "include": f"^{layer}$"}
                for layer, s in zip(LAYER_GRID, (s1, s2, s3), strict=True)
            ]
            cm = _point(model, dataset, steps, args.finetune_epochs, seed=1)
            row = {
                "fc1": s1,
                "fc2": s2,
                "fc3": s3,
                "float32": _measure(cm, dataset, folder, "l"),
                "float16": _measure(_float16(cm), dataset, folder, "h"),
            }
            result["layers"].append(row)
            print("layers", row, f"{time.perf_counter() - start:.0f}s", flush=True)
            args.out.write_text(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
