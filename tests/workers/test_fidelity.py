"""Multi-fidelity rungs, budgets in epochs, and warm starts, through workers.jobs on a real
(SQLite, Alembic-migrated) database with real trials on scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from operators import load_checkpoint
from service.core.budget import Rungs
from service.core.db import Artifact, Job, ModelRecord, Trial, session_scope
from service.core.settings import Settings
from tests.conftest import DIGITS_JOB_SPEC, RecordingDispatcher, trials_of
from tests.workers.test_trial import baseline  # noqa: F401 (the module's baseline fixture)
from workers import jobs
from workers.trial import ModelSource, extends, load_model, run_trial, strategy_epochs


def _set_spec(settings: Settings, job_id: int, **changes: Any) -> None:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        job.spec = {**job.spec, **changes}


def _run_everything(settings: Settings, job_id: int) -> RecordingDispatcher:
    """Advance the job and run every trial it enqueues, in order, until it sends no more."""
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    done = 0
    while done < len(d.evaluations):
        jobs.evaluate_trial(settings, d, *d.evaluations[done])
        done += 1
    return d


def _job(settings: Settings, job_id: int) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def _weights(settings: Settings, trial: Trial) -> dict[str, torch.Tensor]:
    with session_scope(settings.database_url) as session:
        path = Path(settings.artifact_root) / session.get(Artifact, trial.checkpoint_artifact_id).path
    return load_checkpoint(path, runtime="dense")[0].state_dict()


def test_rungs_continue_the_best_of_eta_from_its_own_checkpoint(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    budget = {"max_trials": 3, "max_parallel": 1, "rungs": {"min_fraction": 0.5, "eta": 3}}
    _set_spec(settings, job_id, budget=budget)
    _run_everything(settings, job_id)
    trials = trials_of(settings, job_id)
    low, high = [t for t in trials if t.rung == 0], [t for t in trials if t.rung == 1]
    assert len(low) == 3 and len(high) == 1 and all(t.state == "succeeded" for t in trials)
    assert all(t.fidelity == 0.5 and t.epochs == 0.5 for t in low)
    assert all(t.metrics["total_finetune_epochs"] == 0.5 for t in low)
    (cont,) = high
    parent = next(t for t in low if t.id == cont.parent_trial_id)
    feasible = [t for t in low if t.metrics["accuracy_drop"] <= 0.05]
    assert parent == max(feasible, key=lambda t: t.metrics["compression_ratio"])  # the top 1/3
    assert (cont.strategy, cont.params, cont.steps) == (parent.strategy, parent.params, parent.steps)
    assert cont.fidelity == 1.0 and cont.reason["method"] == "promotion"
    # resumed, not restarted: it ran only the half its rung adds; the full budget in total
    assert cont.metrics["start"] == "resumed" and cont.epochs == 0.5
    assert cont.metrics["finetune_epochs"] == 0.5 and cont.metrics["total_finetune_epochs"] == 1.0
    parent_w, cont_w = _weights(settings, parent), _weights(settings, cont)
    assert torch.equal(parent_w["fc1.weight"] == 0, cont_w["fc1.weight"] == 0)  # same mask
    job = _job(settings, job_id)
    assert job.state == "succeeded" and "trial budget" in job.stop_reason


def test_an_epoch_budget_stops_the_job_and_says_so(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    _set_spec(settings, job_id, budget={"max_trials": 10, "max_parallel": 1, "max_epochs": 2})
    _run_everything(settings, job_id)
    trials = trials_of(settings, job_id)
    assert len(trials) == 2 and sum(t.epochs for t in trials) == 2.0
    job = _job(settings, job_id)
    assert job.state == "succeeded" and job.stop_reason == "epoch budget spent (2 epochs)"


def test_a_warm_start_records_its_parent_and_starts_from_its_weights(digits_job) -> None:  # noqa: ANN001
    """The parent prunes and fine-tunes; the child, a higher sparsity of the same strategy run
    with no fine-tuning, keeps exactly the parent's fine-tuned values where it keeps weights."""
    settings, job_id = digits_job
    _set_spec(settings, job_id, warm_start=True, budget={"max_trials": 2, "max_parallel": 1})
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    _set_spec(settings, job_id, search_space={"strategies": [
        {"name": "p", "steps": [{"op": "prune", "sparsity": 0.9}]}]})  # fmt: skip
    jobs.evaluate_trial(settings, d, *d.evaluations[0])  # the parent; proposes the child
    _set_spec(settings, job_id, finetune={**DIGITS_JOB_SPEC["finetune"], "epochs": 0})
    jobs.evaluate_trial(settings, d, *d.evaluations[1])
    parent, child = trials_of(settings, job_id)
    assert parent.parent_trial_id is None and parent.metrics["start"] == "fresh"
    assert child.parent_trial_id == parent.id and child.metrics["start"] == "warm"
    assert child.reason["warm_start"] == {"parent": parent.id, "number": 0}
    assert child.steps == [{"op": "prune", "sparsity": 0.9}]  # the requested final strength
    parent_w, child_w = _weights(settings, parent), _weights(settings, child)
    layers = [w for name, w in child_w.items() if name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in layers) / sum(w.numel() for w in layers)
    assert abs(zeros - 0.9) < 0.01
    kept = child_w["fc1.weight"] != 0
    assert torch.equal(child_w["fc1.weight"][kept], parent_w["fc1.weight"][kept])
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        model = session.get(ModelRecord, job.model_id)
        weights = Path(settings.artifact_root) / session.get(Artifact, model.weights_artifact_id).path
    original = load_model(ModelSource("mlp", dict(model.config), weights)).state_dict()
    assert not torch.equal(child_w["fc1.weight"][kept], original["fc1.weight"][kept])


def test_without_warm_start_a_stronger_trial_starts_fresh(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    _set_spec(settings, job_id, budget={"max_trials": 2, "max_parallel": 1})
    d = RecordingDispatcher()
    jobs.advance_job(settings, d, job_id)
    _set_spec(settings, job_id, search_space={"strategies": [
        {"name": "p", "steps": [{"op": "prune", "sparsity": 0.9}]}]})  # fmt: skip
    jobs.evaluate_trial(settings, d, *d.evaluations[0])
    child = trials_of(settings, job_id)[1]
    assert child.parent_trial_id is None and "warm_start" not in (child.reason or {})


PRUNE = {"op": "prune", "sparsity": 0.5}


def test_a_strategy_extends_a_weaker_or_shorter_one_of_the_same_steps() -> None:
    assert extends([{**PRUNE, "sparsity": 0.8}], [PRUNE])
    assert extends([PRUNE, {"op": "cluster", "bits": 3}], [PRUNE])  # a clustering after it
    assert extends([{**PRUNE, "sparsity": 0.6}, {"op": "cluster", "bits": 3}],
                   [PRUNE, {"op": "cluster", "bits": 4}])  # fmt: skip
    assert not extends([PRUNE], [PRUNE])  # the same trial again
    assert not extends([{**PRUNE, "sparsity": 0.4}], [PRUNE])  # weaker
    assert not extends([PRUNE, {"op": "cluster", "bits": 5}], [PRUNE, {"op": "cluster", "bits": 4}])
    assert not extends([{**PRUNE, "scope": "layer"}], [PRUNE])  # another step
    assert not extends([{"op": "quantize", "dtype": "float16"}], [PRUNE])
    assert not extends([{"op": "neuron_prune", "ratio": 0.5}], [{"op": "neuron_prune", "ratio": 0.2}])


def test_rung_fractions_grow_by_eta_up_to_full_fidelity(digits_job) -> None:  # noqa: ANN001
    settings, job_id = digits_job
    _set_spec(settings, job_id, budget={"max_trials": 3, "max_parallel": 1,
                                        "rungs": {"min_fraction": 0.1, "eta": 3}})  # fmt: skip
    assert Rungs.of(_job(settings, job_id)).fractions == pytest.approx((0.1, 0.3, 0.9, 1.0))
    _set_spec(settings, job_id, budget={"max_trials": 3, "max_parallel": 1})
    assert Rungs.of(_job(settings, job_id)).fractions == (1.0,)


def _rung_trial(trial_id: int, ratio: float, drop: float, rung: int = 0, parent: int | None = None) -> Trial:
    return Trial(id=trial_id, state="succeeded", rung=rung, parent_trial_id=parent,
                 metrics={"compression_ratio": ratio, "accuracy_drop": drop})  # fmt: skip


def test_promotion_follows_the_predicted_full_fidelity_worth_and_keeps_the_rung_quota() -> None:
    objective = jobs.Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.05}]}
    )
    rungs = Rungs((1 / 3, 1.0), 3)
    # at a third of its epochs the 60x trial is infeasible (0.08 > 0.05); the model says it
    # is worth the most at full fidelity
    low = [_rung_trial(1, 20.0, 0.01), _rung_trial(2, 60.0, 0.08), _rung_trial(3, 5.0, 0.0)]
    worth = {1: 15.0, 2: 40.0, 3: 5.0}
    scores = lambda ranked: [worth.get(t.id, 0.0) for t in ranked]  # noqa: E731
    assert [t.id for t in jobs._promotions(low, objective, rungs, drain=False)] == [1]
    picked = jobs._promotions(low, objective, rungs, drain=False, scores=scores)
    assert [t.id for t in picked] == [2]
    assert [t.id for t in jobs._promotions(low, objective, rungs, drain=False,
                                           scores=lambda ranked: None)] == [1]  # fmt: skip
    # one promotion per 3 finished: once trial 1 was continued, a reordering adds none
    done = [*low, _rung_trial(4, 20.0, 0.0, rung=1, parent=1)]
    assert jobs._promotions(done, objective, rungs, drain=False, scores=scores) == []
    six = [*done, *(_rung_trial(i, 1.0 + i, 0.0) for i in (5, 6, 7))]
    assert [t.id for t in jobs._promotions(six, objective, rungs, drain=False, scores=scores)] == [2]
    # three rungs, two with a place open: one model read for all their waiting trials
    three = Rungs((1 / 9, 1 / 3, 1.0), 3)
    mid = [_rung_trial(i, 30.0 + i, 0.0, rung=1, parent=100 + i) for i in (11, 12, 13)]
    asked: list[list[int]] = []
    def counted(waiting: list[Trial]) -> list[float]:
        asked.append([t.id for t in waiting])
        return [float(t.id) for t in waiting]
    picked = jobs._promotions([*low, *mid], objective, three, drain=False, scores=counted)
    assert [t.id for t in picked] == [13, 3] and len(asked) == 1
    assert sorted(asked[0]) == [1, 2, 3, 11, 12, 13]


def test_the_trial_budget_does_not_end_a_job_without_a_full_fidelity_result(digits_job) -> None:  # noqa: ANN001
    """Two rung-0 trials are fewer than eta: none is continued by the rule, so when the trial
    budget is spent the best of them is carried up to full fidelity before the job ends."""
    settings, job_id = digits_job
    budget = {"max_trials": 2, "max_parallel": 2, "rungs": {"min_fraction": 0.5, "eta": 3}}
    _set_spec(settings, job_id, budget=budget)
    _run_everything(settings, job_id)
    trials = trials_of(settings, job_id)
    assert [t.rung for t in trials] == [0, 0, 1]
    assert trials[2].metrics["start"] == "resumed" and trials[2].fidelity == 1.0
    assert _job(settings, job_id).state == "succeeded"


def _run(source: ModelSource, base: dict, path: Path, steps: list, **start: Any) -> dict:
    return run_trial(
        source=source, dataset_ref="builtin:digits", data_roots=[], steps=steps,
        finetune_spec={"method": "masked", "epochs": 0.5}, seed=0, baseline=base,
        checkpoint_path=path, device=torch.device("cpu"), **start,
    )  # fmt: skip


def test_a_staged_strategy_at_a_third_then_resumed_runs_its_full_epochs(baseline, tmp_path: Path) -> None:  # noqa: ANN001, F811
    source, base = baseline
    steps = [
        {"op": "prune", "sparsity": 0.9, "schedule": {"stages": 2}, "finetune": {"epochs": 0.5}},
        {"op": "cluster", "bits": 3},
    ]
    full = strategy_epochs(steps, {"method": "masked", "epochs": 0.5})
    assert full == 1.5  # two pruning stages and the clustering, half an epoch each
    low = _run(source, base, tmp_path / "low.safetensors", steps, fraction=1 / 3)
    assert low["start"] == "fresh" and low["total_finetune_epochs"] == pytest.approx(0.5)
    high = _run(source, base, tmp_path / "high.safetensors", steps, start_from=tmp_path / "low.safetensors",
                resume_epochs=1.0, prior_epochs=low["total_finetune_epochs"])  # fmt: skip
    assert high["start"] == "resumed" and high["finetune_epochs"] == 1.0
    assert high["total_finetune_epochs"] == pytest.approx(full)
    assert high["accuracy"] > 0.5


def test_a_continuation_whose_layers_changed_restarts_at_its_fidelity(baseline, tmp_path: Path) -> None:  # noqa: ANN001, F811
    source, base = baseline
    steps = [{"op": "lowrank", "rank": 8}]
    _run(source, base, tmp_path / "low.safetensors", steps, fraction=0.5)
    high = _run(source, base, tmp_path / "high.safetensors", steps, start_from=tmp_path / "low.safetensors",
                resume_epochs=0.25, prior_epochs=0.25)  # fmt: skip
    assert high["start"] == "restarted" and high["total_finetune_epochs"] == 0.5
