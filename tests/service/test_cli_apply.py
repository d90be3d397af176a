"""`autocompress apply` then `autocompress evaluate`: a packed checkpoint from the command line."""

import json

import torch
from safetensors.torch import save_file

from operators.zoo import build_model
from service.cli import main


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
