"""A job's best trial, closest trial and front use full-fidelity trials only; the trials list
shows every trial with its fidelity, rung, parent and epochs; the budget's rungs and epochs
are checked at submission."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from search import Objective
from service.api.presenters import (
    best_trial,
    closest_trial,
    job_public,
    pareto_trials,
    trial_public,
)
from service.api.schemas import Budget
from service.core.db import Job, Trial, session_scope
from tests.service.api.test_api_validation import client, fields, job, register  # noqa: F401
from tests.service.api.test_job_results import add_job, app_and_db, metrics  # noqa: F401

OBJECTIVE = Objective.from_spec(
    {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.05}]}
)


def _trial(number: int, ratio: float, drop: float, fidelity: float, rung: int, parent: int | None = None) -> Trial:
    return Trial(
        id=number + 1, job_id=1, number=number, state="succeeded", strategy="p",
        params={"0.sparsity": ratio / 10}, steps=[], attempt=1, progress=1.0,
        metrics={"compression_ratio": ratio, "accuracy_drop": drop, "accuracy": 0.9 - drop,
                 "size_bytes": int(10000 / ratio)},
        fidelity=fidelity, rung=rung, parent_trial_id=parent, epochs=fidelity,
    )  # fmt: skip


def test_a_low_fidelity_trial_is_never_the_best_nor_on_the_front() -> None:
    short = _trial(0, 9.0, 0.01, 0.25, 0)  # the best numbers, on a quarter of the fine-tune
    full = _trial(1, 3.0, 0.02, 1.0, 1, parent=1)
    trials = [short, full]
    assert best_trial(trials, OBJECTIVE) is full
    assert pareto_trials(trials, OBJECTIVE) == [full]
    public = trial_public(full, OBJECTIVE, 1.0)
    assert (public.fidelity, public.rung, public.parent, public.epochs) == (1.0, 1, 1, 1.0)
    assert trial_public(short, OBJECTIVE, 1.0).fidelity == 0.25


def test_only_low_fidelity_results_give_no_best_and_no_closest() -> None:
    trials = [_trial(0, 9.0, 0.01, 0.25, 0), _trial(1, 9.0, 0.20, 0.25, 0)]
    assert best_trial(trials, OBJECTIVE) is None and pareto_trials(trials, OBJECTIVE) == []
    assert closest_trial(trials, OBJECTIVE) is None
    job = Job(id=1, model_id=1, state="running", spec={"objective": OBJECTIVE.to_spec(),
              "budget": {"max_trials": 2, "max_parallel": 1}, "finetune": {"epochs": 1}})  # fmt: skip
    view = job_public(job, trials)
    assert view.best is None and view.progress.trials_done == 2


def test_continued_rungs_do_not_count_as_new_trials() -> None:
    trials = [_trial(0, 3.0, 0.01, 0.5, 0), _trial(1, 3.0, 0.01, 1.0, 1, parent=1)]
    job = Job(id=1, model_id=1, state="running", spec={"objective": OBJECTIVE.to_spec(),
              "budget": {"max_trials": 4, "max_parallel": 1}, "finetune": {"epochs": 1}})  # fmt: skip
    view = job_public(job, trials)
    assert view.progress.trials_done == 1 and view.best.id == 2


@pytest.mark.parametrize(
    "budget",
    [{"rungs": {"min_fraction": 0, "eta": 3}}, {"rungs": {"min_fraction": 0.5, "eta": 1}},
     {"rungs": {"min_fraction": 0.5, "eta": 3, "x": 1}}, {"max_epochs": 0}, {"max_epochs": -1}],
)  # fmt: skip
def test_bad_rungs_and_epoch_budgets_are_refused(budget: dict) -> None:
    with pytest.raises(ValidationError):
        Budget(**budget)


def test_rungs_are_off_by_default() -> None:
    assert Budget().rungs is None and Budget().max_epochs is None
    assert Budget(rungs={"eta": 2}).rungs.min_fraction == 0.25


def test_the_api_names_a_bad_rung_field(client) -> None:  # noqa: ANN001, F811 (the imported fixture)
    model_id = register(client).json()["id"]
    reply = client.post("/v1/jobs", json=job(model_id, budget={"rungs": {"min_fraction": 1.5}}))
    assert fields(reply) == ["body.budget.rungs.min_fraction"]
    reply = client.post("/v1/jobs", json=job(model_id, budget={"max_epochs": "lots"}))
    assert fields(reply) == ["body.budget.max_epochs"]
    reply = client.post("/v1/jobs", json=job(model_id, warm_start="sometimes"))
    assert fields(reply) == ["body.warm_start"]


def test_the_public_json_shows_fidelity_and_picks_full_fidelity_results(app_and_db) -> None:  # noqa: ANN001, F811
    api, settings = app_and_db
    job_id, (short, full) = add_job(
        settings, [("succeeded", metrics(0.95, 1000)), ("succeeded", metrics(0.94, 4000))]
    )
    with session_scope(settings.database_url) as session:
        row = session.get(Trial, short)
        row.fidelity, row.epochs = 0.25, 0.25
        row = session.get(Trial, full)
        row.fidelity, row.rung, row.parent_trial_id, row.epochs = 1.0, 1, short, 0.75
    assert api.get(f"/v1/jobs/{job_id}").json()["best"]["id"] == full
    shown = {t["id"]: t for t in api.get(f"/v1/jobs/{job_id}/trials").json()}
    assert {k: shown[short][k] for k in ("fidelity", "rung", "parent", "epochs")} == {
        "fidelity": 0.25, "rung": 0, "parent": None, "epochs": 0.25}  # fmt: skip
    assert {k: shown[full][k] for k in ("fidelity", "rung", "parent", "epochs")} == {
        "fidelity": 1.0, "rung": 1, "parent": short, "epochs": 0.75}  # fmt: skip
    assert [t["id"] for t in api.get(f"/v1/jobs/{job_id}/pareto").json()["trials"]] == [full]
