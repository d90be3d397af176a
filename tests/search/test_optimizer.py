"""propose(): Sobol start, BoTorch phase, pending points, failures, determinism, speed, the
job's "search" settings, categorical columns, measurement noise (fixed GP noise, no proposal
within the noise of a finished point) and fidelity."""

import json
import math
import statistics
import time
from dataclasses import replace

import pytest
import torch
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood

from search import (
    Candidate,
    Objective,
    Observation,
    SearchSettings,
    SearchSettingsError,
    SearchSpace,
    best_feasible,
    promotion_scores,
    propose,
)
from search.noise import binomial_variance
from search.optimizer import _fit, _redundant, _training_data
from tests.search.conftest import VALIDATION_SAMPLES, near_duplicates, plateau_metrics

THREE_D = SearchSpace.from_spec(
    {
        "strategies": [
            {
                "name": "prune+cluster",
                "steps": [
                    {"op": "prune", "sparsity": {"min": 0.5, "max": 0.99}},
                    {"op": "cluster", "bits": {"min": 2, "max": 8, "type": "int"}},
                    {"op": "quantize", "scale": {"min": 0.01, "max": 1.0, "log": True}},
                ],
            }
        ]
    }
)
TWO_STRATEGIES = SearchSpace.from_spec(
    {
        "strategies": [
            {"name": "prune", "steps": [{"op": "prune", "sparsity": {"min": 0.0, "max": 1.0}}]},
            {"name": "fp16", "steps": [{"op": "quantize", "dtype": "float16"}]},
            {
                "name": "mpd",
                "steps": [{"op": "mpd", "blocks": {"min": 2, "max": 8, "type": "int"}}],
            },
        ]
    }
)


def toy_metrics(space: SearchSpace, candidate: Candidate) -> dict[str, float]:
    """A smooth toy: ratio grows with every encoded column, the drop grows faster."""
    x = space.encode(candidate)
    return {
        "compression_ratio": 1.0 + float(x.sum()),
        "accuracy_drop": float((x**3).mean()),
        "accuracy": 1.0 - float((x**2).mean()),
        "size_bytes": 1e6 / (1.0 + float(x.sum())),
    }


def run_history(space, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    candidates = [
        space.decode(x) for x in torch.rand(n, space.dim, generator=generator, dtype=torch.double)
    ]
    return [Observation(c, toy_metrics(space, c)) for c in candidates]


def keys(proposals):
    return [p.candidate.key() for p in proposals]


def test_sobol_start_is_deterministic_and_skips_pending(constrained):
    first = propose(THREE_D, constrained, [], [], 3, seed=7)
    assert [p.reason["method"] for p in first] == ["sobol"] * 3
    assert keys(first) == keys(propose(THREE_D, constrained, [], [], 3, seed=7))
    assert keys(first) != keys(propose(THREE_D, constrained, [], [], 3, seed=8))
    # with the first point pending, the next two points of the same sequence come out
    later = propose(THREE_D, constrained, [], [first[0].candidate], 2, seed=7)
    assert keys(later) == keys(first)[1:]
    # a finished trial counts like a pending one
    done = [Observation(first[0].candidate, toy_metrics(THREE_D, first[0].candidate))]
    assert (
        keys(propose(THREE_D, constrained, done, [first[1].candidate], 1, seed=7))
        == keys(first)[2:]
    )


def test_default_n_initial_follows_dimension(constrained, one_d):
    assert [p.reason["method"] for p in propose(one_d, constrained, [], [], 3, seed=0)] == [
        "sobol"
    ] * 3
    history = run_history(one_d, 2)
    assert propose(one_d, constrained, history, [], 1, seed=0)[0].reason["method"] == "LogCEI"
    history = run_history(THREE_D, 3)
    assert propose(THREE_D, constrained, history, [], 1, seed=0)[0].reason["method"] == "sobol"


def test_model_phase_is_deterministic_distinct_and_respects_pending(constrained, fast):
    history = run_history(THREE_D, 8)
    rng_before = torch.get_rng_state()
    proposals = propose(THREE_D, constrained, history, [], 3, seed=3, settings=fast)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [p.reason["method"] for p in proposals] == ["qLogNEI"] * 3
    assert len(set(keys(proposals))) == 3
    assert keys(proposals) == keys(
        propose(THREE_D, constrained, history, [], 3, seed=3, settings=fast)
    )
    reason = proposals[0].reason
    assert reason["n_observations"] == 8 and math.isfinite(reason["acquisition_value"])
    assert set(reason["predicted"]) == {"compression_ratio", "accuracy_drop"}
    assert reason["predicted"]["compression_ratio"]["std"] >= 0
    # the GP mean is in the metric's units (ratio between 1 and 4 on this toy)
    assert 0.5 < reason["predicted"]["compression_ratio"]["mean"] < 4.5
    for p in proposals:
        assert 2 <= p.candidate.params["1.bits"] <= 8 and isinstance(
            p.candidate.params["1.bits"], int
        )
    pending = [proposals[0].candidate]
    again = propose(THREE_D, constrained, history, pending, 1, seed=3, settings=fast)
    assert again[0].candidate != pending[0]
    assert again[0].reason["method"] == "qLogNEI"  # pending points need Monte Carlo
    # one point and nothing pending: the analytic constrained EI
    (single,) = propose(THREE_D, constrained, history, [], 1, seed=3, settings=fast)
    assert single.reason["method"] == "LogCEI" and math.isfinite(single.reason["acquisition_value"])


def test_failed_and_nan_observations_do_not_crash(constrained, fast):
    history = run_history(THREE_D, 6)
    c = history[0].candidate
    history += [
        Observation(c, None),
        Observation(history[1].candidate, {"compression_ratio": math.nan, "accuracy_drop": 0.1}),
        Observation(history[2].candidate, {"compression_ratio": 2.0}),  # constraint metric missing
        Observation(history[3].candidate, {"compression_ratio": 2.0, "accuracy_drop": math.inf}),
    ]
    proposals = propose(THREE_D, constrained, history, [], 2, seed=0, settings=fast)
    assert len(proposals) == 2
    assert [p.reason["method"] for p in proposals] == ["qLogNEI"] * 2


def test_failed_observations_are_kept_as_infeasible_points(constrained):
    history = run_history(THREE_D, 4) + [
        Observation(
            Candidate("prune+cluster", {"0.sparsity": 0.6, "1.bits": 3, "2.scale": 0.1}), None
        )
    ]
    X, Y, names = _training_data(THREE_D, constrained, history)
    assert X.shape == (5, 3) and names == ["compression_ratio", "accuracy_drop"]
    assert Y[4, 0] == Y[:4, 0].min()  # the worst observed objective value
    assert Y[4, 1] > max(0.5, float(Y[:4, 1].max()))  # beyond the constraint's bound


@pytest.mark.parametrize(
    ("history", "error"),
    [
        ([Observation(Candidate("prune", {"0.sparsity": 0.5}), None)] * 3, "need 2"),
        (
            [
                Observation(
                    Candidate("prune", {"0.sparsity": s}),
                    {"compression_ratio": 2.0, "accuracy_drop": s},
                )
                for s in (0.1, 0.5, 0.9)
            ],
            "equal",
        ),
        (
            [Observation(Candidate("gone", {}), {"compression_ratio": 1.0, "accuracy_drop": 0.0})]
            * 3,
            "gone",
        ),
    ],
)
def test_unusable_history_falls_back_to_sobol(constrained, one_d, history, error):
    proposals = propose(one_d, constrained, history, [], 2, seed=0)
    assert [p.reason["method"] for p in proposals] == ["random-fallback"] * 2
    assert error in proposals[0].reason["error"]
    assert proposals[0].candidate != proposals[1].candidate
    assert keys(proposals) == keys(propose(one_d, constrained, history, [], 2, seed=0))


def test_constrained_1d_toy_reaches_the_optimum_in_ten_evaluations(constrained, one_d):
    # maximise s subject to s**3 <= 0.5: optimum at s = 0.5 ** (1/3) = 0.7937
    optimum = 0.5 ** (1 / 3)
    gaps = []
    for seed in range(3):
        history, gap = [], math.inf
        for _ in range(10):
            (proposal,) = propose(one_d, constrained, history, [], 1, seed=seed)
            s = proposal.candidate.params["0.sparsity"]
            history.append(
                Observation(proposal.candidate, {"compression_ratio": s, "accuracy_drop": s**3})
            )
            best = best_feasible(history, constrained)
            if best is not None:
                gap = optimum - history[best].metrics["compression_ratio"]
            if gap < 0.03:  # reached; later evaluations cannot make the best worse
                break
        gaps.append(gap)
    assert statistics.median(gaps) < 0.03, gaps


def test_pareto_objective_proposes_with_hypervolume(fast):
    objective = Objective.from_spec(
        {
            "pareto": [
                {"metric": "accuracy", "goal": "max"},
                {"metric": "size_bytes", "goal": "min"},
            ],
            "constraints": [{"metric": "accuracy_drop", "max": 0.4}],
        }
    )
    history = run_history(THREE_D, 8) + [
        Observation(run_history(THREE_D, 1, seed=9)[0].candidate, None)
    ]
    proposals = propose(
        THREE_D, objective, history, [history[0].candidate], 2, seed=1, settings=fast
    )
    assert [p.reason["method"] for p in proposals] == ["qLogNEHVI"] * 2
    assert set(proposals[0].reason["predicted"]) == {"accuracy", "size_bytes", "accuracy_drop"}
    assert len(set(keys(proposals))) == 2
    # one point, nothing pending: EHVI over the front of the posterior means
    (single,) = propose(THREE_D, objective, history, [], 1, seed=1, settings=fast)
    assert single.reason["method"] == "qLogEHVI"
    assert single.candidate.key() not in {o.candidate.key() for o in history}
    # size_bytes is modelled in log space; its prediction is back in bytes
    assert 1e5 < single.reason["predicted"]["size_bytes"]["mean"] < 1e6


def test_several_strategies_including_one_without_parameters(fast):
    objective = Objective.from_spec({"minimize": "size_bytes"})
    history = run_history(TWO_STRATEGIES, 6)
    assert {o.candidate.strategy for o in history} >= {"prune", "mpd"}
    proposals = propose(TWO_STRATEGIES, objective, history, [], 2, seed=0, settings=fast)
    assert [p.reason["method"] for p in proposals] == ["qLogNEI"] * 2
    for p in proposals:
        steps = TWO_STRATEGIES.materialize(p.candidate)  # a valid candidate of its strategy
        assert steps[0]["op"] in ("prune", "quantize", "mpd")
    assert len(set(keys(proposals))) == 2


@pytest.mark.parametrize("seed", [-1, 2**70])
def test_any_integer_seed_works(constrained, one_d, seed):
    for history in ([], run_history(one_d, 3)):
        proposals = propose(one_d, constrained, history, [], 1, seed=seed)
        assert proposals[0].reason["method"] in ("sobol", "LogCEI")


def test_space_without_free_parameters():
    space = SearchSpace.from_spec(
        {"strategies": [{"name": "fp16", "steps": [{"op": "quantize", "dtype": "float16"}]}]}
    )
    proposals = propose(space, Objective.from_spec({"maximize": "accuracy"}), [], [], 2, seed=0)
    assert [p.candidate for p in proposals] == [Candidate("fp16", {})] * 2


def test_large_history_fits_on_a_subset_and_caps_the_effort(constrained, fast):
    settings = replace(fast, fit_subset=8)
    assert settings.for_history(8) is settings
    capped = SearchSettings().for_history(65)
    assert (capped.num_restarts, capped.mc_samples, capped.maxiter, capped.fit_maxiter) == (
        2,
        32,
        40,
        20,
    )
    history = run_history(THREE_D, 14)
    first = propose(THREE_D, constrained, history, [], 1, seed=5, settings=settings)
    assert first[0].reason["method"] == "LogCEI"
    assert keys(first) == keys(
        propose(THREE_D, constrained, history, [], 1, seed=5, settings=settings)
    )


def test_propose_with_thirty_observations_is_fast(constrained):
    history = run_history(THREE_D, 30)
    propose(THREE_D, constrained, history, [], 1, seed=0)  # warm caches
    timings = []
    for seed in (1, 2):
        start = time.process_time()  # CPU time: the test machine is shared and busy
        propose(THREE_D, constrained, history, [], 1, seed=seed)
        timings.append(time.process_time() - start)
    assert min(timings) < 3.0, timings


def test_small_discrete_space_keeps_proposing_json_ready_reasons(fast):
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "mpd",
                    "steps": [{"op": "mpd", "blocks": {"min": 2, "max": 4, "type": "int"}}],
                }
            ]
        }
    )
    objective = Objective.from_spec({"maximize": "compression_ratio"})
    history: list[Observation] = []
    for _ in range(4):
        proposals = propose(space, objective, history, [], 2, seed=0, settings=fast)
        assert len(proposals) == 2
        json.dumps([p.reason for p in proposals], allow_nan=False)
        blocks = [p.candidate.params["0.blocks"] for p in proposals]
        assert len(set(blocks)) == 2 and all(b in (2, 3, 4) for b in blocks)
        history += [
            Observation(p.candidate, {"compression_ratio": float(b)})
            for p, b in zip(proposals, blocks, strict=True)
        ]


def test_search_settings_parse_and_reject_unknown_fields():
    assert SearchSettings.from_spec(None).method == "bo"
    assert SearchSettings.from_spec({"method": "two-phase"}).method == "two-phase"
    with pytest.raises(SearchSettingsError) as error:
        SearchSettings.from_spec({"method": "grid"})
    assert error.value.field == "search.method" and "two-phase" in str(error.value)
    with pytest.raises(SearchSettingsError, match="search.budget"):
        SearchSettings.from_spec({"budget": 3})


def test_string_choices_are_categorical_and_enumerated(fast):
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "prune+q",
                    "steps": [
                        {"op": "prune", "sparsity": {"min": 0.5, "max": 0.99}},
                        {"op": "quantize", "dtype": {"choices": ["float16", "bfloat16"]}},
                        {"op": "cluster", "bits": {"choices": [2, 4, 8]}},
                    ],
                },
                {"name": "fp16", "steps": [{"op": "quantize", "dtype": "float16"}]},
            ]
        }
    )
    assert space.categorical_columns == [1, 3]  # dtype and the strategy; bits stay ordered
    combos = space.fixed_features_list()
    assert len(combos) == 3 and {c[3] for c in combos} == {0.0, 1.0}
    objective = Objective.from_spec({"minimize": "size_bytes"})

    def metrics(c: Candidate) -> dict[str, float]:
        if c.strategy == "fp16":
            return {"size_bytes": 0.5}
        bf = c.params["1.dtype"] == "bfloat16"
        return {"size_bytes": (1 - c.params["0.sparsity"]) * c.params["2.bits"] + 0.1 * bf}

    history = []
    for _ in range(8):
        (p,) = propose(space, objective, history, [], 1, seed=2, settings=fast)
        history.append(Observation(p.candidate, metrics(p.candidate)))
    assert [o.candidate for o in history[-3:]] != []
    assert history[-1].metrics["size_bytes"] >= 0
    assert any(o.candidate.strategy == "prune+q" for o in history[5:])


def plateau_history(space, n, seed=0, settings=None):
    """``n`` trials of the issue's noisy plateau proposed by ``propose`` itself."""
    generator = torch.Generator().manual_seed(seed)
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )
    history = []
    for _ in range(n):
        (p,) = propose(space, objective, history, [], 1, seed=seed, settings=settings)
        history.append(
            Observation(p.candidate, plateau_metrics(p.candidate.params["0.sparsity"], generator))
        )
    return history


def test_accuracy_noise_is_the_gps_fixed_noise(high_sparsity, tight, fast):
    generator = torch.Generator().manual_seed(0)
    history = [
        Observation(c, plateau_metrics(c.params["0.sparsity"], generator))
        for c in (Candidate("prune", {"0.sparsity": s}) for s in (0.6, 0.8, 0.9, 0.95, 0.99))
    ]
    settings = replace(fast, validation_samples=VALIDATION_SAMPLES)
    fitted = _fit(high_sparsity, tight, history, settings, seed=0)
    ratio_gp, drop_gp = fitted.model.models
    assert isinstance(drop_gp.likelihood, FixedNoiseGaussianLikelihood)
    assert not isinstance(ratio_gp.likelihood, FixedNoiseGaussianLikelihood)  # exact: inferred
    # the fixed noise is the binomial variance carried through the bilog warp of the drop
    warp = fitted.warps[1]
    y = torch.tensor([o.metrics["accuracy_drop"] for o in history], dtype=torch.double)
    expected = (
        torch.tensor(
            [binomial_variance(o.metrics["accuracy"], VALIDATION_SAMPLES) for o in history],
            dtype=torch.double,
        )
        * warp.derivative(y) ** 2
    )
    stdv = float(drop_gp.outcome_transform.stdvs.reshape(-1)[0])
    assert torch.allclose(drop_gp.likelihood.noise.reshape(-1) * stdv**2, expected, rtol=1e-6)
    # one standard error of the drop at the bound, one twentieth of the log of the ratio
    assert fitted.resolution[0] == pytest.approx(0.05, rel=1e-6)
    assert 0.05 < float(fitted.resolution[1]) < 0.15
    # without the split's size the GP infers the drop's noise, as before
    unknown = _fit(high_sparsity, tight, history, fast, seed=0)
    assert not isinstance(unknown.model.models[1].likelihood, FixedNoiseGaussianLikelihood)


def test_no_proposal_within_the_noise_of_a_finished_point(high_sparsity, tight, fast):
    settings = replace(fast, validation_samples=VALIDATION_SAMPLES)
    history = plateau_history(
        high_sparsity, 9, seed=1, settings=replace(settings, skip_within_noise=False)
    )
    finished = torch.stack([high_sparsity.encode(o.candidate) for o in history])
    blind = replace(settings, skip_within_noise=False)
    (plain,) = propose(high_sparsity, tight, history, [], 1, seed=1, settings=blind)
    (aware,) = propose(high_sparsity, tight, history, [], 1, seed=1, settings=settings)
    fitted = _fit(high_sparsity, tight, history, settings, seed=1)
    x_plain, x_aware = (high_sparsity.encode(p.candidate).unsqueeze(0) for p in (plain, aware))
    assert bool(_redundant(fitted, x_plain, finished, settings)[0])  # the waste
    assert not bool(_redundant(fitted, x_aware, finished, settings)[0])
    assert aware.reason["skipped_within_noise"] == 1 and aware.reason["method"] == "LogCEI"
    assert "skipped_within_noise" not in plain.reason
    # a batch is deduplicated too: no two proposals within the noise of each other
    batch = propose(high_sparsity, tight, history, [], 3, seed=1, settings=settings)
    X = torch.stack([high_sparsity.encode(p.candidate) for p in batch])
    for i in range(1, 3):
        assert not bool(_redundant(fitted, X[i : i + 1], torch.cat([finished, X[:i]]), settings)[0])


def test_near_duplicate_trials_drop_on_the_noisy_plateau(high_sparsity, fast):
    # the issue: 12 of 20 trials between sparsity 0.899 and 0.907, inside the noise
    settings = replace(fast, validation_samples=VALIDATION_SAMPLES)
    blind = plateau_history(
        high_sparsity, 12, seed=1, settings=replace(settings, skip_within_noise=False)
    )
    aware = plateau_history(high_sparsity, 12, seed=1, settings=settings)
    sparsities = [[o.candidate.params["0.sparsity"] for o in h] for h in (blind, aware)]
    before, after = (near_duplicates(s) for s in sparsities)
    assert before >= 4 and after <= before // 2, (before, after)  # measured here: 5 and 2


def _short(sparsity: float, fidelity: float = 0.25) -> Observation:
    """A shorter fine-tune's result at ``sparsity``: the toy drop of ``one_d`` plus 0.1 (less
    training recovers less)."""
    drop = sparsity**3 + 0.1
    return Observation(
        Candidate("prune", {"0.sparsity": sparsity}),
        {"compression_ratio": 1.0 + sparsity, "accuracy_drop": drop},
        fidelity,
    )


def test_low_fidelity_results_are_no_model_data_when_switched_off_and_never_best(
    constrained, one_d, fast
):
    history = run_history(one_d, 5)
    short = Observation(
        Candidate("prune", {"0.sparsity": 0.7}),
        {"compression_ratio": 9.0, "accuracy_drop": 0.0},
        0.25,
    )
    off = replace(fast, low_fidelity_data=False)
    fitted = _fit(one_d, constrained, [*history, short], off, seed=0)
    assert fitted.X.shape[0] == 5  # the shorter fine-tune is not in the model
    assert best_feasible([*history, short], constrained) != 5
    for settings in (off, fast):
        proposal = propose(one_d, constrained, [*history, short], [], 1, seed=0, settings=settings)
        assert proposal[0].reason["n_observations"] == 6


def test_low_fidelity_results_are_model_data_read_at_full_fidelity(constrained, one_d, fast):
    full = run_history(one_d, 3)
    shorts = [_short(s) for s in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)]
    fitted = _fit(one_d, constrained, [*full, *shorts], fast, seed=0)
    assert fitted.X.shape == (10, 1)  # every trial, encoded without the fidelity column
    train_inputs = fitted.model.model.models[1].train_inputs[0]
    assert train_inputs.shape == (10, 2) and sorted(set(train_inputs[:, 1].tolist())) == [0.25, 1.0]
    # at a sparsity only a short fine-tune saw, the prediction is the full-fidelity drop
    # (the toy's x**3), not the short one's (0.1 more), once the offset is learnt
    x = torch.tensor([[0.65]], dtype=torch.double)
    with torch.no_grad():
        z = fitted.model.posterior(x).mean[0, 1]
    drop = float(fitted.warps[1].untransform(z))
    assert abs(drop - 0.65**3) < abs(drop - (0.65**3 + 0.1)), drop
    proposal = propose(one_d, constrained, [*full, *shorts], [], 1, seed=0, settings=fast)[0]
    assert proposal.reason["method"] == "LogCEI", proposal.reason
    pending = [Candidate("prune", {"0.sparsity": 0.42})]
    batch = propose(one_d, constrained, [*full, *shorts], pending, 2, seed=0, settings=fast)
    assert [p.reason["method"] for p in batch] == ["qLogNEI", "qLogNEI"], batch[0].reason


def test_promotion_scores_rank_a_short_fine_tunes_strong_compression_by_its_full_fidelity_worth(
    constrained, one_d, fast
):
    # at a quarter of the epochs the toy's drop is 0.1 higher: sparsity 0.75 is infeasible
    # there (0.52 > 0.5) but feasible at full fidelity (0.42), with the largest ratio
    full = run_history(one_d, 3)
    shorts = [_short(s) for s in (0.05, 0.2, 0.35, 0.4, 0.5, 0.65, 0.75, 0.9, 0.95)]
    candidates = [o.candidate for o in shorts]
    scores = promotion_scores(one_d, constrained, [*full, *shorts], candidates, settings=fast)
    assert scores is not None and len(scores) == len(shorts)
    feasible = [o for o in shorts if constrained.is_feasible(o.metrics)]
    by_result = max(feasible, key=lambda o: o.metrics["compression_ratio"])
    by_score = shorts[max(range(len(shorts)), key=scores.__getitem__)]
    assert by_result.candidate.params["0.sparsity"] == 0.65  # feasible at the short fine-tune
    assert by_score.candidate.params["0.sparsity"] == 0.75, scores
    assert scores[-1] < scores[-3] and scores[-2] < scores[-3]  # 0.9, 0.95: infeasible even at full
    # no fidelity column (only full-fidelity data): no scores
    assert promotion_scores(one_d, constrained, full, candidates[:2], settings=fast) is None


def test_noise_settings_parse_and_reject_bad_values():
    settings = SearchSettings.from_spec(
        {"near_distance": 0.1, "noise_sigmas": 2, "stop_below_noise": False, "stop_min_trials": 12}
    )
    assert (settings.near_distance, settings.noise_sigmas, settings.stop_below_noise) == (
        0.1,
        2.0,
        False,
    )
    assert settings.stop_min_trials == 12 and isinstance(settings.noise_sigmas, float)
    assert SearchSettings.from_spec(None).skip_within_noise is True
    for spec, field in (
        ({"near_distance": 2}, "search.near_distance"),
        ({"noise_sigmas": "1"}, "search.noise_sigmas"),
        ({"skip_within_noise": 1}, "search.skip_within_noise"),
        ({"stop_min_trials": 2.5}, "search.stop_min_trials"),
        ({"min_relative_change": math.nan}, "search.min_relative_change"),
        ({"validation_samples": 10}, "search.validation_samples"),  # the worker's to set
    ):
        with pytest.raises(SearchSettingsError) as error:
            SearchSettings.from_spec(spec)
        assert error.value.field == field
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="validation_samples"):
            SearchSettings(validation_samples=bad)
