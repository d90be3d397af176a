"""The ``mpd`` op: which layers get a mask, the density it gives, and what the file stores."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, save_checkpoint
from operators.models.zoo import build_model
from operators.ops.mpd.packed import MPDLinear, mpd_mask


def test_output_layer_stays_dense_unless_include_names_it(lenet):
    cm = apply_strategy(lenet, [{"op": "mpd", "blocks": 10}])
    assert set(cm.packing) == {"fc1", "fc2"} and "fc3" in cm.report[0]["skipped"]
    cm = apply_strategy(lenet, [{"op": "mpd", "blocks": 10, "include": "fc"}])
    assert set(cm.packing) == {"fc1", "fc2", "fc3"}
    cm = apply_strategy(lenet, [{"op": "mpd", "blocks": 10, "exclude": "fc1"}])
    assert set(cm.packing) == {"fc2"}


def test_the_mask_is_the_permuted_block_diagonal_of_the_spec(lenet):
    cm = apply_strategy(lenet, [{"op": "mpd", "blocks": 10, "seed": 3}])
    spec = cm.packing["fc1"]
    expected = mpd_mask(300, 784, 10, spec.tensors["row_perm"], spec.tensors["col_perm"])
    assert torch.equal(cm.masks["fc1.weight"], expected)
    assert torch.equal(cm.model.fc1.weight != 0, expected)
    assert cm.report[0]["density"]["fc1"] == pytest.approx(0.1, abs=1e-3)
    again = apply_strategy(lenet, [{"op": "mpd", "blocks": 10, "seed": 3}])
    assert torch.equal(again.masks["fc1.weight"], expected)  # the seed fixes the permutations
    other = apply_strategy(lenet, [{"op": "mpd", "blocks": 10, "seed": 4}])
    assert not torch.equal(other.masks["fc1.weight"], expected)


def test_mpd_checkpoint_stores_blocks_and_permutations(lenet, tmp_path):
    cm = apply_strategy(lenet, [{"op": "mpd", "blocks": 10}, {"op": "quantize"}])
    path = tmp_path / "m.safetensors"
    save_checkpoint(cm, path, architecture="lenet-300-100", config={})
    loaded, manifest = load_checkpoint(path, runtime="packed")
    assert manifest["modules"]["fc1"]["kind"] == "mpd_linear"
    assert manifest["tensors"]["fc1.blocks"]["dtype"] == "float16"
    assert isinstance(loaded.fc1, MPDLinear)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), cm.model(x), atol=1e-5, rtol=0)
    dense_bytes = 266_610 * 4
    assert path.stat().st_size < dense_bytes / 15  # 1/10 of the weights, in float16


def test_layers_smaller_than_the_block_count_are_skipped():
    model = build_model("mlp", {"in_features": 64, "hidden": [48, 8], "num_classes": 10})
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 16}])
    assert set(cm.packing) == {"fc1"} and cm.report[0]["skipped"] == ["fc2", "fc3"]
    with pytest.raises(ValueError, match="mpd: no selected Linear/Conv2d layer has at least 16"):
        apply_strategy(model, [{"op": "mpd", "blocks": 16, "include": "fc2"}])


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "mpd", "blocks": 1}, "blocks: must be an integer >= 2, got 1"),
        ({"op": "mpd", "blocks": 4, "seed": -1}, "seed: must be an integer >= 0"),
        ({"op": "mpd"}, "blocks: required by mpd"),
    ],
)
def test_bad_parameters_are_refused(step, message, assert_invalid_step):
    assert_invalid_step(step, message)
