"""progress.eta_seconds (`service.api.presenters.eta_seconds`): the work the budgets leave,
laid out on `max_parallel` lanes; continued rungs are not spent proposals, the rungs still to
come are counted, and the time and epoch budgets stop what may start."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.api.presenters import eta_seconds
from service.core.db import Job, Trial

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def job(max_trials: int, max_parallel: int = 1, **budget: object) -> Job:
    spec = {"budget": {"max_trials": max_trials, "max_parallel": max_parallel, **budget},
            "finetune": {"epochs": 2}}  # fmt: skip
    return Job(state="running", spec=spec, started_at=NOW - timedelta(seconds=100))


def trial(
    state: str, started: float, finished: float | None = None, rung: int = 0,
    epochs: float | None = None,
) -> Trial:  # fmt: skip
    """A trial that started `started` seconds before NOW (and finished `finished` before)."""
    return Trial(state=state, rung=rung, epochs=epochs, started_at=NOW - timedelta(seconds=started),
                 finished_at=None if finished is None else NOW - timedelta(seconds=finished))  # fmt: skip


def test_eta_lays_the_trials_left_on_the_parallel_lanes() -> None:
    running = job(6, max_parallel=2)
    assert eta_seconds(running, [trial("running", 5)], NOW) is None  # nothing finished yet
    trials = [trial("succeeded", 100, 80), trial("failed", 80, 40), trial("running", 10)]
    # mean 30 s; the running one has 20 s left on its lane, the other lane is free: the 3
    # proposals left end at 30, 50 and 60 s
    assert eta_seconds(running, trials, NOW) == pytest.approx(60)
    running.state = "succeeded"
    assert eta_seconds(running, trials, NOW) == 0.0


def test_eta_lets_no_trial_start_after_the_time_budget() -> None:
    trials = [trial("succeeded", 100, 80), trial("failed", 80, 40), trial("running", 10)]
    # 20 s of the 2 minutes left: one proposal starts now (ends at 30 s); at 20 s, when the
    # running one ends, the time is spent and nothing else starts
    assert eta_seconds(job(6, max_parallel=2, max_minutes=2), trials, NOW) == pytest.approx(30)
    # time spent: only the running trial's remainder is left, however many proposals remain
    assert eta_seconds(job(6, max_parallel=2, max_minutes=1), trials, NOW) == pytest.approx(20)


def test_eta_does_not_count_continued_rungs_as_spent_proposals() -> None:
    # rungs 0.5 and 1.0 (eta 2); 4 proposals: 2 made, 1 of them continued to full fidelity
    rungs = job(4, rungs={"min_fraction": 0.5, "eta": 2})
    trials = [
        trial("succeeded", 90, 80),
        trial("succeeded", 70, 60),
        trial("succeeded", 40, 30, rung=1),
    ]
    # left: 2 proposals and 1 continuation (4 // 2 reach rung 1), 10 s each, one lane
    assert eta_seconds(rungs, trials, NOW) == pytest.approx(30)
    trials.append(trial("succeeded", 20, 10))  # a third proposal: 1 left, 1 continuation
    assert eta_seconds(rungs, trials, NOW) == pytest.approx(20)


def test_eta_scales_a_rung_none_has_finished_by_the_epochs_it_adds() -> None:
    # rungs 0.25, 0.75, 1.0 (eta 3): rung 1 adds 0.5 of the fine-tune, rung 2 adds 0.25
    rungs = job(3, rungs={"min_fraction": 0.25, "eta": 3})
    trials = [trial("succeeded", 90, 80), trial("succeeded", 70, 60), trial("succeeded", 50, 40)]
    # the proposals are spent; one continuation per higher rung (the drain carries one up):
    # rung 1 costs 10 s x 0.5 / 0.25 = 20 s, rung 2 10 s x 0.25 / 0.25 = 10 s
    assert eta_seconds(rungs, trials, NOW) == pytest.approx(30)
    # once rung 1 has a measured trial (30 s), its continuation is priced by it: rung 2 is
    # priced from its nearest measured rung, 30 s x 0.25 / 0.5 = 15 s
    trials.append(trial("succeeded", 35, 5, rung=1))
    assert eta_seconds(rungs, trials, NOW) == pytest.approx(15)
    trials.append(trial("running", 5, rung=2))  # now running: 15 s expected, 5 s done
    assert eta_seconds(rungs, trials, NOW) == pytest.approx(10)


def test_eta_stops_counting_where_the_epoch_budget_is_spent() -> None:
    trials = [trial("succeeded", 40, 30, epochs=2.0), trial("succeeded", 20, 10, epochs=2.0)]
    assert eta_seconds(job(10), trials, NOW) == pytest.approx(80)  # 8 proposals of 10 s
    # 9 epochs: 4 spent, so three more 2-epoch trials start (at 4, 6 and 8 epochs spent)
    assert eta_seconds(job(10, max_epochs=9), trials, NOW) == pytest.approx(30)
    queued = [*trials, trial("queued", 0, epochs=2.0)]  # a queued one runs: it is under way
    assert eta_seconds(job(10, max_epochs=9), queued, NOW) == pytest.approx(30)
    assert eta_seconds(job(10, max_epochs=4), queued, NOW) == pytest.approx(10)
