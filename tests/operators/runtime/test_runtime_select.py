"""Per-layer, per-batch-size runtime choice: dispatch logic with injected decision tables, and
the folding of permutations between consecutive MPD layers."""

import pytest
import torch
from torch import nn

from operators.core.strategy import apply_strategy
from operators.metrics import count_macs, count_params
from operators.models.zoo import build_model
from operators.ops.mpd.packed import MPDLinear
from operators.runtime.pack import pack_model
from operators.runtime.select import (
    TIMING_BATCHES,
    BatchDispatch,
    batch_bucket,
    dispatch,
    fold_permutations,
    packed_wins,
    select_runtime,
)


@pytest.mark.parametrize(
    ("batch", "bucket"), [(1, 0), (3, 0), (5, 1), (16, 1), (63, 1), (65, 2), (256, 2), (4096, 2)]
)
def test_batch_bucket_is_nearest_timed_batch_in_log_scale(batch, bucket):
    assert TIMING_BATCHES == (1, 16, 256)
    assert batch_bucket(batch) == bucket


def test_dispatch_keeps_one_form_unless_each_wins_somewhere():
    dense, packed = nn.Linear(4, 3), nn.Identity()
    assert dispatch(dense, packed, (True, True, True)) is packed
    assert dispatch(dense, packed, (False, False, False)) is dense
    mixed = dispatch(dense, packed, (False, True, False))
    assert isinstance(mixed, BatchDispatch)
    assert [mixed.choose(b) for b in (1, 16, 256)] == [dense, packed, dense]
    with pytest.raises(ValueError, match="one flag per batch"):
        BatchDispatch(dense, packed, (True,))


def _mpd_mlp():
    torch.manual_seed(0)
    model = build_model("mlp", {"in_features": 64, "hidden": [48, 40], "num_classes": 12})
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 4, "include": "fc"}])
    return cm, pack_model(cm).eval()


def test_injected_table_picks_forms_per_layer_and_batch_and_outputs_agree():
    cm, model = _mpd_mlp()
    table = {48: (True, False, True), 40: (True, True, True), 12: (True, True, True)}
    seen = []

    def decide(dense, packed, shape):
        seen.append(shape)
        return table[packed.rows]

    model = select_runtime(model, "auto", [64], decide=decide)
    assert sorted(seen) == [(40,), (48,), (64,)]
    assert isinstance(model.fc1, BatchDispatch)
    assert isinstance(model.fc1.choose(16), nn.Linear) and isinstance(
        model.fc1.choose(1), MPDLinear
    )
    assert isinstance(model.fc2, MPDLinear) and isinstance(model.fc3, MPDLinear)
    # only the always-packed pair is folded; the dispatched layer keeps its output gather
    assert model.fc2.skip_output_gather and not model.fc1.packed.skip_output_gather
    reference = cm.model.eval()
    with torch.no_grad():
        for batch in (1, 2, 16, 40, 300):
            x = torch.randn(batch, 64)
            torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)
    packed_only = select_runtime(_mpd_mlp()[1], "packed")
    assert count_params(model) == count_params(packed_only)  # fc1 counted once
    assert count_macs(model, [64]) == count_macs(packed_only, [64])  # batch 1 runs packed


def test_never_winning_packed_form_leaves_plain_layers():
    cm, model = _mpd_mlp()
    model = select_runtime(model, "auto", [64], decide=lambda d, p, s: (False,) * 3)
    assert all(type(m) in (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential) for m in model.modules())
    x = torch.randn(7, 64)
    torch.testing.assert_close(model(x), cm.model.eval()(x), atol=1e-5, rtol=0)


def test_measured_decisions_have_one_flag_per_batch_and_are_cached():
    _, model = _mpd_mlp()
    packed = model.fc1
    first = packed_wins(packed.to_dense(), packed, (64,))
    assert len(first) == len(TIMING_BATCHES) and all(isinstance(w, bool) for w in first)
    assert packed_wins(packed.to_dense(), packed, (64,)) is first


def test_folding_permutations_between_layers_keeps_outputs():
    torch.manual_seed(0)
    model = build_model("vgg-cifar", {"width": 0.125}).eval()
    cm = apply_strategy(model, [{"op": "mpd", "blocks": 4, "exclude": "^conv1$|fc"}])
    packed = pack_model(cm).eval()
    x = torch.randn(2, 3, 32, 32)
    want = cm.model.eval()(x)
    assert fold_permutations(packed) >= 5
    torch.testing.assert_close(packed(x), want, atol=1e-5, rtol=1e-5)
    mlp = build_model("mlp", {"in_features": 64, "hidden": [48, 40]})
    cm = apply_strategy(mlp, [{"op": "mpd", "blocks": 4}])
    packed = select_runtime(pack_model(cm).eval(), "packed")
    assert packed.fc1.skip_output_gather  # fc2 is followed by the dense output layer
    assert isinstance(packed.fc2, MPDLinear) and not packed.fc2.skip_output_gather
    x = torch.randn(3, 64)
    torch.testing.assert_close(packed(x), cm.model(x), atol=1e-5, rtol=0)
