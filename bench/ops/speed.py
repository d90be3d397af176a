"""Speed: the dense model against its packed checkpoint, side by side, batch 1 and 256.

    .venv/bin/python -m bench.ops.speed [--repeats 7] [--quick]

For each model and op: compress (random weights: speed does not depend on training), write
the packed checkpoint, load it with ``runtime="auto"`` (the loader measures each packed layer
against its dense form and keeps the faster), then time the dense model and the loaded one
alternately in the same process and report medians and the dense/packed ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from operators.checkpoint import load_checkpoint, save_checkpoint, save_dense_checkpoint
from operators.strategy import apply_strategy
from operators.zoo import build_model

MODELS = [
    ("lenet-300-100", {}, (1, 28, 28)),
    ("lenet-5", {}, (1, 28, 28)),
    ("vgg-cifar", {"width": 0.5}, (3, 32, 32)),
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


def side_by_side(dense, packed, x, repeats: int) -> tuple[float, float]:
    """Median seconds of dense and packed, timed alternately after a warm-up."""
    times = {"d": [], "p": []}
    with torch.inference_mode():
        for model in (dense, packed, dense, packed):
            model(x)
        for _ in range(repeats):
            for key, model in (("d", dense), ("p", packed)):
                start = time.perf_counter()
                model(x)
                times[key].append(time.perf_counter() - start)
    return statistics.median(times["d"]), statistics.median(times["p"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | op | batch | dense ms | packed ms | speed-up | packed layers | size dense/packed |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, config, shape in MODELS:
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
                kinds = sorted({type(m).__name__ for m in packed.modules()
                                if type(m).__name__ in ("MPDLinear", "MPDConv2d", "SparseLinear")})  # fmt: skip
                n_packed = sum(type(m).__name__ in ("MPDLinear", "MPDConv2d", "SparseLinear")
                               for m in packed.modules())  # fmt: skip
                for batch in (1, 256):
                    x = torch.randn(batch, *shape)
                    reps = args.repeats if batch == 256 else args.repeats * 4
                    d, p = side_by_side(dense, packed, x, reps)
                    layers = f"{n_packed} {'/'.join(kinds)}" if n_packed else "0 (dense kernels)"
                    print(f"| {arch} {config or ''} | {label} | {batch} | {d * 1e3:.3f} | "
                          f"{p * 1e3:.3f} | {d / p:.2f}x | {layers} | {dense_bytes / size:.1f}x |",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
