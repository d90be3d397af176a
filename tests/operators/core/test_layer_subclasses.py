"""Layer subclasses: packed like the torch layer they compute as, and resized in place when
structural pruning shrinks a module type with no registered kind (timm's BatchNormAct2d)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import operators  # noqa: F401  (fills the registry)
from operators.core.registry import describe_resized, kind_of, plain_layer_type, resize_module
from operators.core.strategy import apply_strategy
from operators.format.checkpoint import load_checkpoint, save_checkpoint


class Scaled(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Renamed(nn.Linear):
    pass


def test_a_subclass_that_keeps_forward_computes_as_its_base_and_one_that_overrides_does_not():
    assert plain_layer_type(Renamed(3, 2)) is nn.Linear
    assert kind_of(Renamed(3, 2)) == "linear"
    assert plain_layer_type(Scaled(3, 2)) is Scaled
    assert kind_of(Scaled(3, 2)) is None
    assert plain_layer_type(nn.MultiheadAttention(4, 2).out_proj) is nn.Linear


def test_a_resized_record_restores_shapes_and_size_attributes_and_refuses_bad_records():
    small, base = nn.BatchNorm2d(3), nn.BatchNorm2d(5)
    record = describe_resized(small, base)
    assert record["kind"] == "resized" and record["args"]["attrs"] == {"num_features": 3}
    resize_module(base, record["args"])
    assert base.num_features == 3 and base.weight.shape == (3,) and base.running_var.shape == (3,)
    assert describe_resized(nn.BatchNorm2d(5), nn.BatchNorm2d(5)) is None
    with pytest.raises(ValueError, match="must name the tensors"):
        resize_module(nn.BatchNorm2d(5), {"shapes": {"weight": [3]}})
    with pytest.raises(ValueError, match="unknown size attribute"):
        resize_module(nn.BatchNorm2d(5), {**record["args"], "attrs": {"eps": 1}})


@pytest.mark.parametrize(
    "steps",
    [[{"op": "filter_prune", "ratio": 0.3}],
     [{"op": "prune", "sparsity": 0.8}, {"op": "cluster", "bits": 3}]],  # fmt: skip
    ids=["filter_prune", "prune+cluster"],
)
def test_timm_mobilenet_compresses_and_reloads_with_equal_outputs(tmp_path, steps):
    pytest.importorskip("timm")
    from operators.models.sources import build

    arch, config = "timm:mobilenetv3_small_050", {"num_classes": 10, "in_chans": 1}
    model = build(arch, config).eval()
    x = torch.randn(2, 1, 32, 32)
    cm = apply_strategy(model, steps, example_input=x[:1])
    save_checkpoint(cm, tmp_path / "m.safetensors", architecture=arch, config=config)
    for runtime in ("dense", "packed"):
        loaded, _ = load_checkpoint(tmp_path / "m.safetensors", runtime=runtime)
        torch.testing.assert_close(loaded(x), cm.model.eval()(x), atol=1e-5, rtol=0)
