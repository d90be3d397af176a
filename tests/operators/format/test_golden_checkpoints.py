"""Checkpoints written by earlier releases still load and give the same outputs: format v2
(safetensors + JSON manifest, ``<name>.safetensors``) and format v3 (the compact container,
``<name>.v3.acpk``); see tests/data/checkpoints/README.md."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from operators import load_checkpoint

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "checkpoints"
CASES = ("lenet5-filter-block", "mlp-mpd-int8", "mlp-neuron-unify", "mlp-prune-cluster-fp16")
FILES = {2: ("{}.safetensors", "{}.expected.safetensors"),
         3: ("{}.v3.acpk", "{}.v3.expected.safetensors")}  # fmt: skip


def test_golden_files_are_present():
    for version, patterns in FILES.items():
        for case in CASES:
            assert all((GOLDEN / p.format(case)).is_file() for p in patterns), (version, case)


@pytest.mark.parametrize("runtime", ["dense", "packed", "auto"])
@pytest.mark.parametrize("version", sorted(FILES))
@pytest.mark.parametrize("name", CASES)
def test_golden_checkpoint_loads_with_the_recorded_outputs(name, version, runtime):
    checkpoint, outputs = (p.format(name) for p in FILES[version])
    expected = load_file(GOLDEN / outputs)
    model, manifest = load_checkpoint(GOLDEN / checkpoint, runtime=runtime)
    assert manifest["version"] == version
    with torch.no_grad():
        out = model(expected["inputs"])
    torch.testing.assert_close(out, expected["outputs"], atol=1e-5, rtol=1e-5)
