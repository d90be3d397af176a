"""Speed: the dense model against its packed checkpoint, side by side, batch 1 and 256.

    .venv/bin/python -m bench.ops.speed [--repeats 7] [--threads N] [--models REGEX]

For each model and op: compress (random weights: speed does not depend on training), write
the packed checkpoint, load it with ``runtime="auto"`` (the loader measures each packed layer
against its dense form at batch 1, 16 and 256 and runs, per layer and batch size, the faster),
then time the dense model and the loaded one alternately in the same process, with the same
threads, and report medians and the dense/packed ratio. "packed layers" counts the layers that
run packed at that batch size. The load average (``os.getloadavg``) is printed at the start
and end: other processes on the cores distort every timing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from operators.core.registry import PackedModule
from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, save_checkpoint, save_dense_checkpoint
from operators.models.zoo import build_model
from operators.runtime.select import BatchDispatch

MODELS = [
    ("lenet-300-100", {}, (1, 28, 28)),
    ("lenet-5", {}, (1, 28, 28)),
    ("vgg-cifar", {}, (3, 32, 32)),
    ("resnet-cifar", {"depth": 20}, (3, 32, 32)),
    ("mlp", {"in_features": 784, "hidden": [4096, 4096], "num_classes": 10}, (1, 28, 28)),
]
OPS = {
    "prune 0.9": [{"op": "prune", "sparsity": 0.9}],
    "mpd k=10": [{"op": "mpd", "blocks": 10}],
    "neuron/filter 50%": None,  # neuron_prune for MLPs, filter_prune for conv nets
}


def _steps(label: str, arch: str) -> list[dict]:
    if OPS[label] is not None:
        return OPS[label]
    op = "neuron_prune" if arch in ("lenet-300-100", "mlp") else "filter_prune"
    return [{"op": op, "ratio": 0.5}]


def packed_layers(model: torch.nn.Module, batch: int) -> str:
    """'N Kind/Kind' for the layers running packed at ``batch`` (dispatched ones included)."""
    running = [m for m in model.modules() if isinstance(m, PackedModule)]
    dispatched = [m for m in model.modules() if isinstance(m, BatchDispatch)]
    running = [m for m in running if not any(m is d.packed for d in dispatched)]
    running += [d.packed for d in dispatched if d.choose(batch) is d.packed]
    if not running:
        return "0 (dense kernels)"
    return f"{len(running)} {'/'.join(sorted({type(m).__name__ for m in running}))}"


def side_by_side(dense, packed, x, repeats: int, budget_s: float = 4.0) -> tuple[float, float]:
    """Median seconds of dense and packed, timed alternately after a warm-up: at least
    ``repeats`` pairs, more (up to 50x) while the pairs fit in ``budget_s``, so that fast
    models get enough samples for a stable median on a shared machine."""
    times = {"d": [], "p": []}
    with torch.inference_mode():
        for model in (dense, packed, dense, packed):
            model(x)
        start_all = time.perf_counter()
        while len(times["d"]) < repeats or (
            len(times["d"]) < 50 * repeats and time.perf_counter() - start_all < budget_s
        ):
            for key, model in (("d", dense), ("p", packed)):
                start = time.perf_counter()
                model(x)
                times[key].append(time.perf_counter() - start)
    return statistics.median(times["d"]), statistics.median(times["p"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", default=None, help="regex: only the matching architectures")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()}")  # fmt: skip
    print("| model | op | batch | dense ms | packed ms | speed-up | packed layers | size dense/packed |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, config, shape in MODELS:
            if args.models is not None and re.search(args.models, arch) is None:
                continue
            dense = build_model(arch, config).eval()
            dense_bytes = save_dense_checkpoint(
                dense, Path(tmp) / "d.safetensors", architecture=arch, config=config
            )
            for label in OPS:
                steps = _steps(label, arch)
                cm = apply_strategy(dense, steps, example_input=torch.zeros(1, *shape))
                path = Path(tmp) / "p.safetensors"
                size = save_checkpoint(cm, path, architecture=arch, config=config)
                packed, _ = load_checkpoint(path, runtime="auto")
                for batch in (1, 256):
                    x = torch.randn(batch, *shape)
                    d, p = side_by_side(dense, packed, x, args.repeats)
                    layers = packed_layers(packed, batch)
                    print(f"| {arch} {config or ''} | {label} | {batch} | {d * 1e3:.3f} | "
                          f"{p * 1e3:.3f} | {d / p:.2f}x | {layers} | {dense_bytes / size:.1f}x |",
                          flush=True)  # fmt: skip
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
