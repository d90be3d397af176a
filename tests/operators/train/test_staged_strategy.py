"""Staged strategies: schedules ramp a strength over stages with fine-tuning between, steps
carry their own fine-tuning, and a plain strategy is one stage as before."""

import pytest
import torch

from operators.core.strategy import apply_strategy
from operators.metrics import evaluate
from operators.models.zoo import build_model
from operators.train.loop import train
from operators.train.staged import plan_stages, ramp, run_strategy, validate_strategy

MLP = ("mlp", {"in_features": 64, "hidden": [32], "num_classes": 10})


def test_cubic_ramp_reaches_the_target_fast_then_slowly():
    assert ramp(0.9, 3) == pytest.approx([0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])
    assert ramp(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_a_plain_strategy_is_one_stage():
    (stage,) = plan_stages([{"op": "prune", "sparsity": 0.5}, {"op": "quantize", "dtype": "float16"}])
    assert [op.name for op in stage.ops] == ["prune", "quantize"] and stage.finetune is None


def test_deep_compression_order_is_one_strategy():
    stages = plan_stages([
        {"op": "prune", "sparsity": 0.98, "schedule": {"stages": 2, "ramp": "linear"},
         "finetune": {"epochs": 2}},
        {"op": "cluster", "bits": 3},
        {"op": "quantize", "dtype": "float16", "finetune": {"method": "masked", "epochs": 1}},
    ])  # fmt: skip
    assert [[(op.name, getattr(op, "sparsity", None)) for op in s.ops] for s in stages] == [
        [("prune", pytest.approx(0.49))],
        [("prune", pytest.approx(0.98))],
        [("cluster", None), ("quantize", None)],
    ]
    assert [s.finetune for s in stages] == [{"epochs": 2}, {"epochs": 2}, {"method": "masked", "epochs": 1}]


def test_channel_schedules_remove_the_share_of_what_is_left():
    stages = plan_stages([{"op": "neuron_prune", "ratio": 0.75, "schedule": {"stages": 3, "ramp": "linear"}}])
    ratios = [s.ops[0].ratio for s in stages]
    kept = 1.0
    for r in ratios:
        kept *= 1 - r
    assert kept == pytest.approx(0.25)


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"op": "quantize", "dtype": "float16", "schedule": {"stages": 2}}], r"steps\[0\]\.schedule: quantize has no strength"),
        ([{"op": "prune", "sparsity": 0.5, "schedule": {"stages": 0}}], r"steps\[0\]\.schedule\.stages"),
        ([{"op": "prune", "sparsity": 0.5, "schedule": {"ramp": "exp"}}], r"steps\[0\]\.schedule\.ramp"),
        ([{"op": "prune", "sparsity": 0.5, "schedule": {"every": 2}}], r"steps\[0\]\.schedule\.every: unknown"),
        ([{"op": "prune", "sparsity": 0.5, "finetune": {"method": "magic"}}], r"steps\[0\]\.finetune\.method"),
        ([{"op": "prune", "sparsity": 0.5, "finetune": {"speed": 2}}], r"steps\[0\]\.finetune\.speed: unknown"),
        ([{"op": "prune", "sparsity": 2.0}], r"steps\[0\]\.sparsity"),
    ],
)
def test_invalid_stage_keys_are_named(steps, message):
    with pytest.raises(ValueError, match=message):
        validate_strategy(steps)


def test_gradual_pruning_beats_one_shot_at_high_sparsity(digits):
    torch.manual_seed(0)
    model = build_model(*MLP)
    train(model, digits, epochs=8, lr=3e-3)
    tune = {"method": "masked", "epochs": 1, "lr": 2e-3}
    one_shot = run_strategy(model, [{"op": "prune", "sparsity": 0.95}], digits, tune)
    gradual = run_strategy(
        model, [{"op": "prune", "sparsity": 0.95, "schedule": {"stages": 3}}], digits, tune
    )
    for cm in (one_shot, gradual):  # the same global sparsity over the weights
        weights = torch.cat([cm.model.fc1.weight.flatten(), cm.model.fc2.weight.flatten()])
        assert float((weights == 0).float().mean()) == pytest.approx(0.95, abs=0.002)
    stages = [r for r in gradual.report if "stage" in r]
    assert [r["stage"] for r in stages] == [1, 2, 3]
    assert evaluate(gradual.model, digits)["accuracy"] > evaluate(one_shot.model, digits)["accuracy"]


def test_one_stage_run_equals_apply_then_finetune(digits):
    torch.manual_seed(0)
    model = build_model(*MLP)
    steps = [{"op": "prune", "sparsity": 0.5}]
    cm = run_strategy(model, steps, digits, {"method": "none"})
    reference = apply_strategy(model, steps)
    for name, param in cm.model.named_parameters():
        assert torch.equal(param, dict(reference.model.named_parameters())[name])


def _prune_reports(cm):
    return [r for r in cm.report if r.get("op") == "prune"]


def test_a_schedule_ramps_on_from_the_sparsity_the_weights_already_have(digits):
    torch.manual_seed(0)
    model = build_model(*MLP)
    steps = [{"op": "prune", "sparsity": 0.9, "schedule": {"stages": 3, "ramp": "linear"}}]
    fresh = run_strategy(model, steps, digits, {"method": "none"})
    assert [r["sparsity"] for r in _prune_reports(fresh)] == pytest.approx([0.3, 0.6, 0.9], abs=0.002)
    with torch.no_grad():  # a warm start's parent: 60% of the weights already zero
        parent = apply_strategy(model, [{"op": "prune", "sparsity": 0.6}]).model
    warm = run_strategy(parent, steps, digits, {"method": "none"})
    assert [r["sparsity"] for r in _prune_reports(warm)] == pytest.approx([0.7, 0.8, 0.9], abs=0.002)
    assert plan_stages(steps)[0].ops[0].sparsity == pytest.approx(0.3)  # the plan is from 0
    with torch.no_grad():  # already sparser than the target: every stage at the target
        sparser = apply_strategy(model, [{"op": "prune", "sparsity": 0.95}]).model
    held = run_strategy(sparser, steps, digits, {"method": "none"})
    assert [r["sparsity"] for r in _prune_reports(held)] == pytest.approx([0.9, 0.9, 0.9], abs=0.002)
