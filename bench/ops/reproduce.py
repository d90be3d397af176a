"""Operators II reproduction table: each op and fine-tune method on MNIST, and the best combos.

    .venv/bin/python -m bench.ops.reproduce                      # every row
    .venv/bin/python -m bench.ops.reproduce --rows 300-prune98-c3-masked lenet5-int8-none

Baselines (Adam, lr 1e-3, cosine, 4 epochs) are trained once and cached under ``bench/.cache``.
A row is one or more stages; each stage applies a strategy to the previous stage's model and
fine-tunes it (``kd``'s teacher is always the baseline). The last stage is written as the packed
checkpoint, reloaded (``runtime="auto"``) and evaluated on MNIST's test split; ``size bytes``
is the whole file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.ops.accuracy import baseline
from operators.core.strategy import apply_strategy
from operators.data.datasets import load_dataset
from operators.format.checkpoint import load_checkpoint, save_checkpoint, save_dense_checkpoint
from operators.metrics import evaluate
from operators.train.finetune import finetune

BASELINE_EPOCHS = 4
FP16 = {"op": "quantize", "dtype": "float16"}
INT8 = {"op": "quantize", "dtype": "int8"}


def prune(s: float) -> dict:
    return {"op": "prune", "sparsity": s}


def cluster(bits: int) -> dict:
    return {"op": "cluster", "bits": bits}


UNIFY = {"op": "unify", "block": [1, 4], "unify_ratio": 0.5, "prune_ratio": 0.3}


@dataclass
class Stage:
    steps: list[dict]
    method: str = "masked"
    epochs: float = 2
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    model: str
    label: str
    stages: list[Stage]


def _single(model: str, key: str, label: str, steps: list[dict], methods: dict) -> list[tuple]:
    return [
        (f"{key}-{method}", Row(model, f"{label}, {method}", [Stage(steps, method, epochs, extra)]))
        for method, (epochs, extra) in methods.items()
    ]


LC = {"lr": 0.01, "iterations": 5}
E300, E5 = 2, 1
BEST = [prune(0.98), cluster(3), FP16]
ROWS: dict[str, Row] = dict(
    [
        ("300-deep-981-c3", Row("lenet-300-100",
                                "Deep Compression order: prune 0.9, masked 2 ep; prune 0.981, "
                                "masked 4 ep; then + cluster 3 + fp16, masked 1 ep",
                                [Stage([prune(0.9)], "masked", 2), Stage([prune(0.981)], "masked", 4),
                                 Stage([prune(0.981), cluster(3), FP16], "masked", 1)])),
        ("lenet5-deep-98-c3", Row("lenet-5",
                                  "Deep Compression order: prune 0.9, masked 1 ep; prune 0.98, "
                                  "masked 2 ep; then + cluster 3 + fp16, masked 1 ep",
                                  [Stage([prune(0.9)], "masked", 1), Stage([prune(0.98)], "masked", 2),
                                   Stage(BEST, "masked", 1)])),
        ("300-gradual-98-c3", Row("lenet-300-100",
                                  "prune 0.9, kd 2 ep; then prune 0.98 + cluster 3 + fp16, kd 3 ep",
                                  [Stage([prune(0.9)], "kd", 2), Stage(BEST, "kd", 3)])),
        ("300-gradual-985-c2", Row("lenet-300-100",
                                   "prune 0.9, kd 2 ep; then prune 0.985 + cluster 2 + fp16, kd 3 ep",
                                   [Stage([prune(0.9)], "kd", 2),
                                    Stage([prune(0.985), cluster(2), FP16], "kd", 3)])),
        *_single("lenet-300-100", "300-prune98-c3", "prune 0.98 + cluster 3 + fp16", BEST,
                 {"none": (0, {}), "masked": (E300, {}), "kd": (E300, {}), "lc": (E300, LC)}),
        *_single("lenet-300-100", "300-int8", "quantize int8", [INT8], {"none": (0, {})}),
        *_single("lenet-300-100", "300-cluster4", "cluster 4 bits", [cluster(4)], {"none": (0, {})}),
        *_single("lenet-300-100", "300-cluster2", "cluster 2 bits", [cluster(2)],
                 {"none": (0, {}), "masked": (1, {})}),
        *_single("lenet-300-100", "300-prune95", "prune 0.95", [prune(0.95)],
                 {"masked": (E300, {}), "kd": (E300, {}), "lc": (E300, LC)}),
        *_single("lenet-300-100", "300-unify", "unify [1,4] 0.5/0.3", [UNIFY],
                 {"none": (0, {}), "masked": (1, {}), "admm": (1, {"lr": 0.01, "iterations": 4})}),
        *_single("lenet-5", "lenet5-int8", "quantize int8", [INT8], {"none": (0, {})}),
        *_single("lenet-5", "lenet5-cluster3", "cluster 3 bits", [cluster(3)], {"none": (0, {})}),
        ("lenet5-gradual-98-c3", Row("lenet-5",
                                     "prune 0.9, kd 1 ep; then prune 0.98 + cluster 3 + fp16, kd 1 ep",
                                     [Stage([prune(0.9)], "kd", 1), Stage(BEST, "kd", 1)])),
        *_single("lenet-5", "lenet5-prune98-c3", "prune 0.98 + cluster 3 + fp16", BEST,
                 {"masked": (E5, {}), "lc": (E5, LC)}),
    ]
)  # fmt: skip
PAPERS = {
    "lenet-300-100": "Deep Compression 40x (pruning + 6-bit sharing + Huffman, -0.0 points); "
    "Condensa L-C prune 0.02 + fp16: 97.95% from 97.99% (about 24x counting a 1-bit mask)",
    "lenet-5": "Condensa 239x by its own measure (nonzero values only)",
}


def run_row(row: Row, base: torch.nn.Module, data, tmp: Path) -> tuple[float, int]:
    """Accuracy and checkpoint bytes of ``row`` applied to ``base``."""
    model = base
    for stage in row.stages:
        cm = apply_strategy(model, stage.steps, example_input=data.x_val[:1])
        cm.teacher = base
        finetune(cm, data, method=stage.method, epochs=stage.epochs, schedule="cosine",
                 **{"lr": 1e-3, **stage.extra})  # fmt: skip
        model = cm.model
    path = tmp / "p.safetensors"
    size = save_checkpoint(cm, path, architecture=row.model, config={})
    packed, _ = load_checkpoint(path)
    return evaluate(packed, data)["accuracy"], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_dataset("builtin:mnist")
    print("| model | strategy, fine-tune | accuracy | drop (points) | size bytes | ratio | "
          "minutes | row (`--rows`) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    bases: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.rows:
            row = ROWS[key]
            if row.model not in bases:
                base = baseline(row.model, data, BASELINE_EPOCHS)
                acc = evaluate(base, data)["accuracy"]
                dense = save_dense_checkpoint(base, Path(tmp) / "d.safetensors",
                                              architecture=row.model, config={})  # fmt: skip
                bases[row.model] = (base, acc, dense)
                print(f"| {row.model} | baseline (dense fp32) | {acc:.4f} | 0 | {dense} | 1.0x "
                      f"| | |", flush=True)  # fmt: skip
            base, base_acc, dense = bases[row.model]
            start = time.perf_counter()
            acc, size = run_row(row, base, data, Path(tmp))
            print(f"| {row.model} | {row.label} | {acc:.4f} | {100 * (base_acc - acc):.2f} | "
                  f"{size} | {dense / size:.1f}x | {(time.perf_counter() - start) / 60:.1f} | "
                  f"`{key}` |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
