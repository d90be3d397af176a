"""Evaluate the LeNet-300-100 / MNIST landscapes once, with the project's real operators.

Writes ``bench/search/data/lenet300_mnist.json``: a trained baseline, then

* ``global``: global magnitude pruning at a grid of sparsities (the 1-D problem), and
* ``layers``: per-layer sparsities of fc1, fc2, fc3 (``prune`` with ``include`` and
  ``scope: layer``), each stored in float32 and float16 (the 4-parameter problem),

each point pruned, fine-tuned with the compression held (``masked``, a short epoch), packed
with :func:`operators.checkpoint.save_checkpoint` and evaluated. Takes about 10-15 minutes on
two CPU cores; the benchmark itself only reads the JSON. Run::

    .venv/bin/python -m bench.search.make_landscape
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

DATA = Path(__file__).parent / "data" / "lenet300_mnist.json"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-epochs", type=float, default=8)
    parser.add_argument("--finetune-epochs", type=float, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
        size = save_dense_checkpoint(
            model, folder / "dense.safetensors", architecture=ARCHITECTURE, config=CONFIG
        )
        result["baseline"] = {**evaluate(model, dataset), "size_bytes": size}
        print("baseline", result["baseline"], f"{time.perf_counter() - start:.0f}s", flush=True)

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
