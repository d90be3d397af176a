"""Search space: parsing the job-spec JSON, errors naming the field, encoding and materialising."""

import math

import pytest
import torch

from search import Candidate, SearchSpace, SearchSpaceError

JOB_SPEC_EXAMPLE = {
    "strategies": [
        {
            "name": "prune+cluster",
            "steps": [
                {"op": "prune", "sparsity": {"min": 0.5, "max": 0.99}},
                {"op": "cluster", "bits": {"choices": [2, 3, 4, 5, 6, 8]}},
            ],
        },
        {"name": "mpd", "steps": [{"op": "mpd", "blocks": {"min": 2, "max": 32, "type": "int"}}]},
    ]
}

MIXED = {
    "strategies": [
        {
            "name": "a",
            "steps": [
                {"op": "block_prune", "sparsity": {"min": 0.1, "max": 0.9}, "block": [4, 4]},
                {"op": "quantize", "dtype": {"choices": ["float16", "bfloat16", "int8"]}},
                {"op": "cluster", "bits": {"min": 1, "max": 256, "type": "int", "log": True}},
            ],
        },
        {"name": "b", "steps": [{"op": "mpd", "lr": {"min": 1e-4, "max": 1e-1, "log": True}}]},
        {"name": "c", "steps": [{"op": "quantize", "dtype": "float16"}]},
    ]
}


def test_parses_the_job_spec_example():
    space = SearchSpace.from_spec(JOB_SPEC_EXAMPLE)
    assert [s.name for s in space.strategies] == ["prune+cluster", "mpd"]
    first, second = space.strategies
    assert [(p.path, p.kind) for p in first.params] == [
        ("0.sparsity", "float"),
        ("1.bits", "choice"),
    ]
    assert first.params[0].low == 0.5 and first.params[0].high == 0.99
    assert first.params[1].choices == (2, 3, 4, 5, 6, 8)
    assert [(p.path, p.kind, p.low, p.high) for p in second.params] == [("0.blocks", "int", 2, 32)]
    assert space.dim == 4  # three params and the strategy column
    assert space.strategy_column == 3


def test_single_strategy_has_no_strategy_column():
    space = SearchSpace.from_spec({"strategies": [JOB_SPEC_EXAMPLE["strategies"][0]]})
    assert space.dim == 2 and space.strategy_column is None


@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({}, "search_space.strategies", "non-empty"),
        ({"strategies": []}, "search_space.strategies", "non-empty"),
        ({"strategies": [], "extra": 1}, "search_space.extra", "unknown key"),
        (
            {"strategies": [{"name": "x", "steps": [{"op": "prune"}]}] * 2},
            "search_space.strategies[1].name",
            "duplicate",
        ),
        (
            {"strategies": [{"name": "x", "steps": []}]},
            "search_space.strategies[0].steps",
            "non-empty",
        ),
        (
            {"strategies": [{"steps": [{"op": "prune"}]}]},
            "search_space.strategies[0].name",
            "string",
        ),
        (
            {"strategies": [{"name": "x", "steps": [{"sparsity": 0.5}]}]},
            "search_space.strategies[0].steps[0].op",
            "string",
        ),
        (
            {
                "strategies": [
                    {"name": "x", "steps": [{"op": "prune"}]},
                    {"name": "y", "steps": [{"op": "prune", "sparsity": {"min": 0.9, "max": 0.5}}]},
                ]
            },
            "search_space.strategies[1].steps[0].sparsity",
            "min must be < max",
        ),
        (
            {
                "strategies": [
                    {"name": "x", "steps": [{"op": "p", "lr": {"min": 0, "max": 1, "log": True}}]}
                ]
            },
            "search_space.strategies[0].steps[0].lr.min",
            "> 0",
        ),
        (
            {
                "strategies": [
                    {"name": "x", "steps": [{"op": "p", "s": {"min": 0, "max": 1, "step": 0.1}}]}
                ]
            },
            "search_space.strategies[0].steps[0].s.step",
            "unknown key",
        ),
        (
            {
                "strategies": [
                    {"name": "x", "steps": [{"op": "p", "s": {"min": 0, "max": 1, "type": "str"}}]}
                ]
            },
            "search_space.strategies[0].steps[0].s.type",
            "int",
        ),
        (
            {
                "strategies": [
                    {
                        "name": "x",
                        "steps": [{"op": "p", "k": {"min": 1.5, "max": 4, "type": "int"}}],
                    }
                ]
            },
            "search_space.strategies[0].steps[0].k.min",
            "integer",
        ),
        (
            {"strategies": [{"name": "x", "steps": [{"op": "p", "s": {"max": 1}}]}]},
            "search_space.strategies[0].steps[0].s.min",
            "required",
        ),
        (
            {"strategies": [{"name": "x", "steps": [{"op": "p", "s": {"min": "a", "max": 1}}]}]},
            "search_space.strategies[0].steps[0].s.min",
            "number",
        ),
        (
            {"strategies": [{"name": "x", "steps": [{"op": "p", "b": {"choices": []}}]}]},
            "search_space.strategies[0].steps[0].b.choices",
            "non-empty",
        ),
        (
            {
                "strategies": [
                    {"name": "x", "steps": [{"op": "p", "b": {"choices": [1], "min": 0}}]}
                ]
            },
            "search_space.strategies[0].steps[0].b.min",
            "unknown key",
        ),
        (
            {"strategies": [{"name": "x", "steps": [{"op": "p", "b": {"foo": 1}}]}]},
            "search_space.strategies[0].steps[0].b",
            "range",
        ),
    ],
)
def test_invalid_spec_names_the_field(spec, field, text):
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_spec(spec)
    assert info.value.field == field
    assert text in str(info.value)
    assert str(info.value).startswith(field + ": ")
    assert isinstance(info.value, ValueError)


def test_encode_decode_round_trip():
    space = SearchSpace.from_spec(MIXED)
    candidates = [
        Candidate("a", {"0.sparsity": 0.37, "1.dtype": "int8", "2.bits": 16}),
        Candidate("b", {"0.lr": 3e-3}),
        Candidate("c", {}),
    ]
    for candidate in candidates:
        x = space.encode(candidate)
        assert x.dtype == torch.double and x.shape == (space.dim,)
        assert bool(((x >= 0) & (x <= 1)).all())
        decoded = space.decode(x)
        assert decoded.strategy == candidate.strategy
        assert decoded.params.keys() == candidate.params.keys()
        for key, value in candidate.params.items():
            if isinstance(value, float):
                assert decoded.params[key] == pytest.approx(value, rel=1e-12)
            else:
                assert decoded.params[key] == value


def test_encoding_layout_inactive_columns_choices_and_log():
    space = SearchSpace.from_spec(MIXED)
    x = space.encode(Candidate("b", {"0.lr": 1e-4 * 10**1.5}))
    # columns: a's three params, b's lr, strategy index
    assert x.tolist()[:3] == [0.5, 0.5, 0.5]
    assert x[3].item() == pytest.approx(0.5)  # halfway in log space
    assert x[4].item() == pytest.approx(0.5)  # strategy 1 of 0..2
    a = space.encode(Candidate("a", {"0.sparsity": 0.1, "1.dtype": "bfloat16", "2.bits": 256}))
    assert a[:3].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert a[4].item() == 0.0


def test_decode_respects_int_log_ranges_and_snaps_strategy():
    space = SearchSpace.from_spec(MIXED)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for x in torch.rand(200, space.dim, generator=generator, dtype=torch.double):
        candidate = space.decode(x)
        seen.add(candidate.strategy)
        if candidate.strategy == "a":
            assert 0.1 <= candidate.params["0.sparsity"] <= 0.9
            bits = candidate.params["2.bits"]
            assert isinstance(bits, int) and 1 <= bits <= 256
            assert candidate.params["1.dtype"] in ("float16", "bfloat16", "int8")
        elif candidate.strategy == "b":
            assert 1e-4 <= candidate.params["0.lr"] <= 1e-1
    assert seen == {"a", "b", "c"}
    # log space: half of the unit interval lands below the geometric mean
    lr = [
        space.decode(torch.tensor([0.5, 0.5, 0.5, u, 0.5])).params["0.lr"] for u in (0.0, 0.5, 1.0)
    ]
    assert lr == pytest.approx([1e-4, math.sqrt(1e-4 * 1e-1), 1e-1])
    # out-of-range inputs are clamped
    assert space.decode(torch.tensor([2.0, -1.0, 9.0, 0.5, 0.0])).params == {
        "0.sparsity": 0.9,
        "1.dtype": "float16",
        "2.bits": 256,
    }


def test_materialize_substitutes_values_and_keeps_fixed_ones():
    space = SearchSpace.from_spec(MIXED)
    candidate = Candidate("a", {"0.sparsity": 0.25, "1.dtype": "int8", "2.bits": 4})
    steps = space.materialize(candidate)
    assert steps == [
        {"op": "block_prune", "sparsity": 0.25, "block": [4, 4]},
        {"op": "quantize", "dtype": "int8"},
        {"op": "cluster", "bits": 4},
    ]
    assert candidate.steps(space) == steps
    steps[0]["block"].append(9)  # a copy: the space is untouched
    assert space.strategies[0].steps[0]["block"] == [4, 4]
    assert space.materialize(Candidate("c", {})) == [{"op": "quantize", "dtype": "float16"}]
    with pytest.raises(ValueError):
        space.materialize(Candidate("a", {"0.sparsity": 0.25}))
    with pytest.raises(KeyError):
        space.materialize(Candidate("nope", {}))


def test_candidate_json_round_trip_and_list_choices():
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {"name": "u", "steps": [{"op": "unify", "block": {"choices": [[2, 2], [4, 4]]}}]}
            ]
        }
    )
    candidate = space.decode(torch.tensor([1.0]))
    assert candidate.params == {"0.block": [4, 4]}
    restored = Candidate.from_dict(candidate.to_dict())
    assert restored == candidate and restored.key() == candidate.key()
    # a tuple (as JSON-less code may write) encodes like the list
    assert space.encode(Candidate("u", {"0.block": (4, 4)})).tolist() == [1.0]


def test_candidates_are_hashable_by_their_stored_form():
    a = Candidate("u", {"0.block": [4, 4], "1.bits": 3})
    b = Candidate.from_dict({"params": {"1.bits": 3, "0.block": [4, 4]}, "strategy": "u"})
    assert a == b and len({a, b}) == 1


def test_stage_settings_may_hold_ranges_and_materialize_nested():
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "gradual",
                    "steps": [
                        {
                            "op": "prune",
                            "sparsity": {"min": 0.9, "max": 0.99},
                            "schedule": {
                                "stages": {"min": 2, "max": 4, "type": "int"},
                                "ramp": "cubic",
                            },
                            "finetune": {"epochs": 2},
                        }
                    ],
                }
            ]
        }
    )
    assert [p.path for p in space.strategy("gradual").params] == ["0.sparsity", "0.schedule.stages"]
    steps = space.materialize(Candidate("gradual", {"0.sparsity": 0.95, "0.schedule.stages": 3}))
    assert steps == [
        {
            "op": "prune",
            "sparsity": 0.95,
            "schedule": {"stages": 3, "ramp": "cubic"},
            "finetune": {"epochs": 2},
        }
    ]


def test_a_stage_setting_that_is_not_an_object_is_refused():
    with pytest.raises(SearchSpaceError, match="schedule"):
        SearchSpace.from_spec(
            {
                "strategies": [
                    {"name": "s", "steps": [{"op": "prune", "sparsity": 0.5, "schedule": 3}]}
                ]
            }
        )
