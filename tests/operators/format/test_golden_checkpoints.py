"""Checkpoints written by earlier releases still load and give the same outputs."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from operators import load_checkpoint

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "checkpoints"
NAMES = sorted(p.name.removesuffix(".expected.safetensors") for p in GOLDEN.glob("*.expected.*"))


def test_golden_files_are_present():
    assert len(NAMES) == 4


@pytest.mark.parametrize("runtime", ["dense", "packed", "auto"])
@pytest.mark.parametrize("name", NAMES)
def test_golden_checkpoint_loads_with_the_recorded_outputs(name, runtime):
    expected = load_file(GOLDEN / f"{name}.expected.safetensors")
    model, manifest = load_checkpoint(GOLDEN / f"{name}.safetensors", runtime=runtime)
    assert manifest["version"] == 2
    with torch.no_grad():
        out = model(expected["inputs"])
    torch.testing.assert_close(out, expected["outputs"], atol=1e-5, rtol=1e-5)
