"""Accuracy against size for each op on MNIST (LeNet-300-100, LeNet-5), masked fine-tuning.

    .venv/bin/python -m bench.ops.accuracy [--epochs 2] [--baseline-epochs 8] [--models ...]
        [--only REGEX] [--lr 1e-3] [--method masked]

Baselines are trained once and cached under ``bench/.cache``. Each row: apply the op at one
strength to the baseline, fine-tune with the compression held (Adam, ``--lr``, cosine), write
the packed checkpoint, reload it (``runtime="auto"``) and evaluate it on MNIST's test split.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from operators.core.strategy import apply_strategy
from operators.data.datasets import load_dataset
from operators.format.checkpoint import load_checkpoint, save_checkpoint, save_dense_checkpoint
from operators.metrics import evaluate
from operators.models.zoo import build_model
from operators.train.finetune import finetune
from operators.train.loop import train

CACHE = Path(__file__).resolve().parents[1] / ".cache"
STRATEGIES: dict[str, list[tuple[str, list[dict]]]] = {
    "lenet-300-100": [
        *[(f"prune {s}", [{"op": "prune", "sparsity": s}]) for s in (0.9, 0.95, 0.98)],
        *[(f"neuron_prune {r}", [{"op": "neuron_prune", "ratio": r}]) for r in (0.5, 0.75)],
        *[(f"block_prune {s} [4,4]", [{"op": "block_prune", "sparsity": s, "block": [4, 4]}])
          for s in (0.8, 0.9)],  # fmt: skip
        ("nm_prune 2:4", [{"op": "nm_prune", "n": 2, "m": 4}]),
        ("nm_prune 1:4", [{"op": "nm_prune", "n": 1, "m": 4}]),
        *[(f"mpd k={k}", [{"op": "mpd", "blocks": k}]) for k in (4, 10)],
        ("mpd k=10 + float16", [{"op": "mpd", "blocks": 10}, {"op": "quantize"}]),
    ],
    "lenet-5": [
        *[(f"prune {s}", [{"op": "prune", "sparsity": s}]) for s in (0.9, 0.95)],
        *[(f"filter_prune {r}", [{"op": "filter_prune", "ratio": r}]) for r in (0.5, 0.75)],
        ("block_prune 0.8 [4,4]", [{"op": "block_prune", "sparsity": 0.8, "block": [4, 4]}]),
        ("nm_prune 2:4", [{"op": "nm_prune", "n": 2, "m": 4}]),
        ("mpd k=4 (conv2, fc1, fc2)", [{"op": "mpd", "blocks": 4, "exclude": "conv1|fc3"}]),
    ],
}


def baseline(arch: str, data, epochs: int) -> torch.nn.Module:
    """The trained baseline, from the cache when it exists."""
    path = CACHE / f"{arch}-mnist-{epochs}ep.safetensors"
    model = build_model(arch, {})
    if path.exists():
        model.load_state_dict(load_file(str(path)))
    else:
        train(model, data, epochs=epochs, lr=1e-3, schedule="cosine", seed=0)
        CACHE.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(path))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--method", default="masked", help="fine-tuning method (masked, kd, ...)")
    parser.add_argument("--only", default=None, help="regex: run only the rows whose op matches")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_dataset("builtin:mnist")
    print("| model | op | accuracy | drop (points) | size bytes | ratio | minutes |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            model = baseline(arch, data, args.baseline_epochs)
            base_acc = evaluate(model, data)["accuracy"]
            dense = save_dense_checkpoint(model, Path(tmp) / "d.safetensors", architecture=arch, config={})
            print(f"| {arch} | baseline (dense fp32) | {base_acc:.4f} | 0 | {dense} | 1.0x | |", flush=True)
            for label, steps in STRATEGIES[arch]:
                if args.only is not None and re.search(args.only, label) is None:
                    continue
                start = time.perf_counter()
                cm = apply_strategy(model, steps, example_input=data.x_val[:1])
                finetune(cm, data, method=args.method, epochs=args.epochs, lr=args.lr,
                         schedule="cosine")  # fmt: skip
                path = Path(tmp) / "p.safetensors"
                size = save_checkpoint(cm.__class__(**{**cm.__dict__, "model": cm.model.cpu()}),
                                       path, architecture=arch, config={})  # fmt: skip
                packed, _ = load_checkpoint(path)
                acc = evaluate(packed, data)["accuracy"]
                print(f"| {arch} | {label} | {acc:.4f} | {100 * (base_acc - acc):.2f} | {size} | "
                      f"{dense / size:.1f}x | {(time.perf_counter() - start) / 60:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
