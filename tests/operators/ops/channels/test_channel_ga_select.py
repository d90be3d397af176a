"""filter_prune / neuron_prune with criterion ga: exact channel counts, never worse than L1."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from operators.core.strategy import apply_strategy
from operators.models.zoo import build_model


def _kl(model, reference, x) -> float:  # noqa: ANN001
    with torch.no_grad():
        p = F.log_softmax(reference(x), 1)
        q = F.log_softmax(model(x), 1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


def test_ga_keeps_exactly_the_requested_channels(trained_mlp, digits) -> None:  # noqa: ANN001
    model, data = trained_mlp, digits
    steps = [{"op": "neuron_prune", "ratio": 0.5, "criterion": "ga"}]
    cm = apply_strategy(model, steps, example_input=data.calibration_batch(128))
    widths = [m.out_features for m in cm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 8, 10]
    assert cm.model(data.x_val[:4]).shape == (4, 10)


def test_ga_is_no_worse_than_l1_on_its_own_fitness(trained_mlp, digits) -> None:  # noqa: ANN001
    model, data = trained_mlp, digits
    calib = data.calibration_batch(128)
    held = calib[64:]
    results = {}
    for criterion in ("l1", "ga"):
        steps = [{"op": "neuron_prune", "ratio": 0.5, "criterion": criterion, "include": "fc1"}]
        cm = apply_strategy(model, steps, example_input=calib)
        results[criterion] = _kl(cm.model, model, held)
    assert results["ga"] <= results["l1"] + 1e-6, results


def test_ga_needs_a_calibration_batch(trained_mlp, digits) -> None:  # noqa: ANN001
    model, data = trained_mlp, digits
    with pytest.raises(ValueError, match="calibration"):
        apply_strategy(
            model,
            [{"op": "neuron_prune", "ratio": 0.5, "criterion": "ga"}],
            example_input=data.x_val[:1],
        )


def test_ga_filter_prune_on_a_conv_net() -> None:
    torch.manual_seed(0)
    model = build_model("lenet-5", {}).eval()
    x = torch.randn(32, 1, 28, 28)
    cm = apply_strategy(
        model, [{"op": "filter_prune", "ratio": 0.5, "criterion": "ga"}], example_input=x
    )
    convs = [m.out_channels for m in cm.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [3, 8]
    assert cm.model(x[:2]).shape == (2, 10)
