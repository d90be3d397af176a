"""service.cli: `autocompress apply` and `autocompress evaluate` from the command line."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from operators import build_model, save_dense_checkpoint
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_apply_then_evaluate(tmp_path, capsys):
    torch.manual_seed(0)
    config = {"in_features": 64, "num_classes": 10}
    weights = tmp_path / "w.safetensors"
    save_file(build_model("lenet-300-100", config).state_dict(), str(weights))
    out = tmp_path / "packed.safetensors"
    rc = main([
        "apply", "--architecture", "lenet-300-100", "--config", json.dumps(config),
        "--weights", str(weights), "--dataset", "builtin:digits",
        "--strategy", json.dumps([{"op": "mpd", "blocks": 10}, {"op": "quantize"}]),
        "--finetune", json.dumps({"method": "masked", "epochs": 0.2}), "--output", str(out),
    ])  # fmt: skip
    assert rc == 0
    applied = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert applied["size_bytes"] == out.stat().st_size and applied["compression_ratio"] > 10
    assert main(["evaluate", str(out), "--dataset", "builtin:digits"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["size_bytes"] == out.stat().st_size
    assert metrics["compression_ratio"] == applied["compression_ratio"]
    assert metrics["macs"] <= 64 * 300 + 300 * 100 + 100 * 10


def plain_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint that records no baseline (as any saved without `apply` metadata)."""
    torch.manual_seed(0)
    config = {"in_features": 64, "num_classes": 10}
    path = tmp_path / "plain.safetensors"
    save_dense_checkpoint(
        build_model("lenet-300-100", config), path, architecture="lenet-300-100", config=config
    )
    return path


def test_evaluate_without_a_baseline_prints_the_metrics(tmp_path: Path) -> None:
    """The README's example, as a user runs it: no baseline anywhere, no derived metrics."""
    path = plain_checkpoint(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "evaluate", str(path), "--dataset", "builtin:digits"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["size_bytes"] == path.stat().st_size and 0 <= metrics["accuracy"] <= 1
    assert "latency_ms" in metrics and "macs" in metrics
    assert "accuracy_drop" not in metrics and "compression_ratio" not in metrics


def test_evaluate_with_a_baseline_accuracy_adds_only_the_drop(tmp_path: Path, capsys) -> None:
    path = plain_checkpoint(tmp_path)
    args = ["evaluate", str(path), "--dataset", "builtin:digits", "--baseline-accuracy", "0.9"]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["accuracy_drop"] == 0.9 - metrics["accuracy"]
    assert "compression_ratio" not in metrics
    assert main([*args, "--baseline-size-bytes", str(2 * path.stat().st_size)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["compression_ratio"] == 2.0
