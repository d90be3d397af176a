"""Measurement noise per metric: binomial for accuracy, replicates for timings, none for
sizes; and the warp's slope that carries a variance into modelled units."""

import math

import pytest
import torch

from search import Candidate, Observation, measurement_variances
from search.noise import binomial_variance, noise_kind, replicate_variance
from search.warp import OutputWarp


def obs(sparsity, fidelity=1.0, **metrics):
    return Observation(Candidate("prune", {"0.sparsity": sparsity}), metrics or None, fidelity)


def test_kinds_come_from_the_metric_table():
    assert noise_kind("accuracy") == noise_kind("accuracy_drop") == "binomial"
    assert noise_kind("test_accuracy") == "binomial"
    assert noise_kind("size_bytes") == noise_kind("compression_ratio") == "exact"
    assert noise_kind("latency_ms") == noise_kind("loss") == "measured"


def test_binomial_standard_error_of_the_issue_split():
    # 98.5 % on 10k samples: 0.12 points, as the issue measured
    assert math.sqrt(binomial_variance(0.985, 10_000)) == pytest.approx(0.00122, abs=2e-5)
    assert binomial_variance(1.0, 100) > 0  # shrunk: 100 % still has some noise
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="validation_samples"):
            binomial_variance(0.5, bad)


def test_accuracy_drop_carries_the_spread_of_its_accuracy():
    history = [
        obs(0.1, accuracy=0.98, accuracy_drop=0.005),
        obs(0.9, accuracy=0.5, accuracy_drop=0.48),
    ]
    var = measurement_variances("accuracy_drop", history, validation_samples=10_000)
    assert var[0] == pytest.approx(binomial_variance(0.98, 10_000))
    assert var[1] == pytest.approx(binomial_variance(0.5, 10_000))
    assert measurement_variances("accuracy_drop", history).isnan().all()  # n unknown


def test_replicates_pool_and_exact_metrics_have_none():
    history = [
        obs(0.5, latency_ms=10.0, size_bytes=5.0),
        obs(0.5, latency_ms=12.0, size_bytes=5.0),
        obs(0.7, latency_ms=8.0, size_bytes=4.0),
        obs(0.7, latency_ms=9.0, size_bytes=4.0),
        obs(0.7, 0.25, latency_ms=90.0),  # a shorter fine-tune is no replicate
        obs(0.9),  # failed: gets the others' median
    ]
    assert replicate_variance("latency_ms", history) == pytest.approx((2.0 + 0.5) / 2)
    assert torch.allclose(
        measurement_variances("latency_ms", history), torch.full((6,), 1.25, dtype=torch.double)
    )
    assert (measurement_variances("size_bytes", history) == 0).all()
    # replicates also measure the fine-tune's randomness: the larger of the two counts
    accuracies = [obs(0.5, accuracy=0.9), obs(0.5, accuracy=0.8)]
    var = measurement_variances("accuracy", accuracies, validation_samples=10_000)
    assert torch.allclose(var, torch.full((2,), 0.005, dtype=torch.double))


@pytest.mark.parametrize("warp", [OutputWarp(), OutputWarp("log"), OutputWarp("bilog", 0.01, 0.01)])
def test_warp_slope_matches_finite_differences(warp):
    y = torch.tensor([0.004, 0.01, 0.03, 2.0], dtype=torch.double)
    h = 1e-7
    numeric = (warp.transform(y + h) - warp.transform(y - h)) / (2 * h)
    assert torch.allclose(warp.derivative(y), numeric, rtol=1e-5)
