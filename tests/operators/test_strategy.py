"""Strategy validation, magnitude pruning (exact counts, scopes, selection) and quantize."""

import pytest
import torch

from operators.strategy import OPS, apply_strategy, magnitude_masks, validate_steps
from operators.zoo import build_model

LINEAR_WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return build_model("lenet-300-100", {})


def zeros(tensor: torch.Tensor) -> int:
    return int((tensor == 0).sum())


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [{"op": "prune", "sparsity": 1.0}],
            r"^steps\[0\]\.sparsity: must be in \[0, 1\), got 1\.0$",
        ),
        ([{"op": "prune", "sparsity": -0.1}], r"^steps\[0\]\.sparsity: must be in \[0, 1\)"),
        ([{"op": "prune", "sparsity": "0.5"}], r"^steps\[0\]\.sparsity: must be a number"),
        ([{"op": "prune", "sparsity": True}], r"^steps\[0\]\.sparsity: must be a number"),
        ([{"op": "prune"}], r"^steps\[0\]\.sparsity: required by prune"),
        (
            [{"op": "quantize"}, {"op": "foo"}],
            r"^steps\[1\]\.op: unknown op 'foo'; allowed: prune, quantize, ",
        ),
        ([{"sparsity": 0.5}], r"^steps\[0\]\.op: required"),
        (
            [{"op": "prune", "sparsity": 0.5, "scope": "net"}],
            r"^steps\[0\]\.scope: must be one of global, layer",
        ),
        (
            [{"op": "prune", "sparsity": 0.5, "ratio": 2}],
            r"^steps\[0\]\.ratio: unknown parameter of prune; allowed: include, exclude, sparsity, scope",
        ),
        (
            [{"op": "prune", "sparsity": 0.5, "include": "fc["}],
            r"^steps\[0\]\.include: invalid regular expression",
        ),
        ([{"op": "quantize", "dtype": "int4"}], r"^steps\[0\]\.dtype: must be one of float16, bfloat16, int8"),
        (
            [{"op": "quantize", "dtype": "float8"}],
            r"^steps\[0\]\.dtype: must be one of float16, bfloat16",
        ),
        (["prune"], r"^steps\[0\]: must be an object"),
        ({"op": "prune"}, r"^steps: must be a list"),
    ],
)
def test_invalid_steps_name_the_step_and_parameter(steps, message):
    with pytest.raises(ValueError, match=message):
        validate_steps(steps)


def test_valid_steps_pass_and_every_op_takes_include_and_exclude():
    validate_steps(
        [
            {"op": "prune", "sparsity": 0.5, "scope": "layer", "exclude": "fc3"},
            {"op": "quantize", "dtype": "bfloat16", "include": "fc"},
        ]
    )
    for op in OPS.values():
        assert {"include", "exclude"} <= set(op.parameter_names())


def test_global_prune_hits_the_exact_count_and_keeps_the_largest(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}])
    weights = [cm.model.get_parameter(n) for n in LINEAR_WEIGHTS]
    total = sum(w.numel() for w in weights)
    assert sum(zeros(w) for w in weights) == round(0.9 * total)
    kept = torch.cat([w[w != 0].abs() for w in weights])
    original = torch.cat([lenet.get_parameter(n).detach().flatten() for n in LINEAR_WEIGHTS])
    pruned = original[torch.cat([(w == 0).flatten() for w in weights])].abs()
    assert pruned.max() <= kept.min()
    assert cm.report[0]["sparsity"] == pytest.approx(0.9, abs=1 / total)
    for name in ("fc1.bias", "fc2.bias", "fc3.bias"):
        assert torch.equal(cm.model.get_parameter(name), lenet.get_parameter(name))


def test_ties_are_broken_deterministically_with_an_exact_count():
    tensors = [torch.ones(7, 3), torch.ones(5)]
    first, second = magnitude_masks(tensors, 0.5), magnitude_masks(tensors, 0.5)
    assert sum(int((~m).sum()) for m in first) == round(0.5 * 26)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_layer_scope_gives_each_layer_the_sparsity(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.7, "scope": "layer"}])
    for name in LINEAR_WEIGHTS:
        weight = cm.model.get_parameter(name)
        assert zeros(weight) == round(0.7 * weight.numel())
        assert cm.report[0]["layers"][name] == pytest.approx(0.7, abs=1e-3)


def test_include_and_exclude_select_layers_by_module_name(lenet):
    only_fc1 = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5, "include": "^fc1$"}])
    assert set(only_fc1.masks) == {"fc1.weight"}
    assert zeros(only_fc1.model.fc2.weight) == 0
    not_fc3 = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5, "exclude": "fc3"}])
    assert set(not_fc3.masks) == {"fc1.weight", "fc2.weight"}
    with pytest.raises(ValueError, match="selected no Linear or Conv layer"):
        apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5, "include": "conv"}])


def test_conv_weights_are_pruned_but_not_biases():
    model = build_model("lenet-5", {})
    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.5, "scope": "layer"}])
    assert zeros(cm.model.conv1.weight) == round(0.5 * 150)
    assert "conv1.bias" not in cm.masks


def test_input_model_is_left_untouched(lenet):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    apply_strategy(lenet, [{"op": "prune", "sparsity": 0.9}, {"op": "quantize"}])
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())


def test_successive_prunes_compose(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}, {"op": "prune", "sparsity": 0.8}])
    assert cm.report[1]["sparsity"] == pytest.approx(0.8, abs=1e-5)
    first = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}])
    for name in LINEAR_WEIGHTS:
        assert not (cm.masks[name] & ~first.masks[name]).any()  # pruned stays pruned


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_quantize_keeps_weights_representable_after_enforce(lenet, dtype, torch_dtype):
    cm = apply_strategy(lenet, [{"op": "quantize", "dtype": dtype}])
    assert set(cm.value_dtypes.values()) == {torch_dtype}
    with torch.no_grad():
        for p in cm.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # an optimizer step moves them off the grid
    cm.enforce()
    for p in cm.model.parameters():
        assert torch.equal(p, p.to(torch_dtype).float())


def test_quantize_include_selects_parameters(lenet):
    cm = apply_strategy(lenet, [{"op": "quantize", "include": "fc1"}])
    assert set(cm.value_dtypes) == {"fc1.weight", "fc1.bias"}
    assert cm.report == [
        {
            "op": "quantize",
            "tensors": 2,
            "params": {"include": "fc1", "exclude": None, "dtype": "float16"},
        }
    ]


def test_enforce_writes_positive_zeros(lenet):
    cm = apply_strategy(lenet, [{"op": "prune", "sparsity": 0.5}])
    with torch.no_grad():
        cm.model.fc1.weight.fill_(-1.0)
    cm.enforce()
    pruned = cm.model.fc1.weight[~cm.masks["fc1.weight"]]
    assert pruned.numel() > 0 and (pruned.view(torch.int32) == 0).all()  # +0.0, not -0.0
