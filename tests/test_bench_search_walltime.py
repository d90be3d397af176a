"""The search benchmark's equal-wall-time score (``bench.search``, problem ``lenet-staged``): a
staged landscape read from JSON and interpolated between measured points only, a simulated
wall clock charging measured evaluation seconds plus measured ask time, and its table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from bench.search.problems import Problem, lenet_staged
from bench.search.run import (
    METHODS,
    best_feasible_ratio,
    markdown,
    run_random,
    timed_run,
)
from search import Candidate

BASE = {"accuracy": 0.98, "size_bytes": 1_000_000}


def _landscape(
    tmp_path: Path, eval_seconds: float = 10.0, sparsities=(0.8, 0.9, 0.99), slope: float = 10.0
) -> Path:
    """A staged landscape: accuracy falls with sparsity and fewer bits; size shrinks;
    evaluations take ``eval_seconds`` at sparsity 0.8, ``slope`` more per unit sparsity."""
    points = [
        {
            "sparsity": s,
            "bits": b,
            "accuracy": 0.98 - 0.2 * (s - 0.8) - 0.002 * (5 - b),
            "size_bytes": 1_000_000 * (1 - s) * b / 32,
            "eval_seconds": eval_seconds + slope * (s - 0.8),
        }
        for s in sparsities
        for b in (2, 3, 4, 5)
    ]
    path = tmp_path / "staged.json"
    path.write_text(json.dumps({"baseline": BASE, "points": points}))
    return path


def test_lenet_staged_returns_measured_points_and_interpolates_between_them(tmp_path):
    problem = lenet_staged(_landscape(tmp_path))
    at_measured = problem.evaluate(Candidate("deep-compression", {"0.sparsity": 0.9, "1.bits": 3}))
    assert at_measured["accuracy"] == pytest.approx(0.98 - 0.02 - 0.004)
    assert at_measured["size_bytes"] == pytest.approx(100_000 * 3 / 32)
    assert at_measured["eval_seconds"] == pytest.approx(11.0)
    between = problem.evaluate(Candidate("deep-compression", {"0.sparsity": 0.85, "1.bits": 3}))
    assert between["accuracy"] == pytest.approx(0.98 - 0.01 - 0.004)  # linear in sparsity
    geometric = math.sqrt(200_000 * 100_000) * 3 / 32  # linear in log size
    assert between["size_bytes"] == pytest.approx(geometric)
    assert between["compression_ratio"] == pytest.approx(BASE["size_bytes"] / geometric)
    assert between["accuracy_drop"] == pytest.approx(0.014)


def test_lenet_staged_space_is_the_measured_deep_compression_range(tmp_path):
    problem = lenet_staged(_landscape(tmp_path))
    (strategy,) = problem.space.strategies
    assert strategy.name == "deep-compression"
    sparsity, bits = strategy.params
    assert (sparsity.low, sparsity.high, sparsity.kind) == (0.8, 0.99, "float")
    assert (bits.low, bits.high, bits.kind) == (2, 5, "int")


def test_lenet_staged_refuses_a_landscape_that_would_need_extrapolation(tmp_path):
    with pytest.raises(ValueError, match="covers too little"):
        lenet_staged(_landscape(tmp_path, sparsities=(0.8, 0.95)))


def test_timed_run_stops_when_simulated_evaluation_seconds_spend_the_budget(tmp_path):
    problem = lenet_staged(_landscape(tmp_path, eval_seconds=10.0), wall_seconds=45.0)
    clock = timed_run(problem, run_random, seed=0)
    # each trial costs 10-11.9 s of landscape time: four fit in 45 s, a fifth does not
    assert len(clock.history) == 4
    assert clock.spent > 45.0  # the overrunning trial was charged, then not counted
    assert sum(m["eval_seconds"] for _, m in clock.history) + clock.ask_seconds <= 45.0


def test_timed_run_charges_the_methods_own_ask_time(tmp_path):
    problem = lenet_staged(_landscape(tmp_path, eval_seconds=1.0, slope=0.0), wall_seconds=2.6)

    def slow(problem: Problem, seed: int) -> list[Candidate]:
        out = []
        for _ in range(problem.budget):
            time.sleep(0.3)
            candidate = Candidate("deep-compression", {"0.sparsity": 0.8, "1.bits": 4})
            problem.evaluate(candidate)
            out.append(candidate)
        return out

    assert len(timed_run(problem, run_random, seed=0).history) == 2  # 1 s each, ask ~ms
    clock = timed_run(problem, slow, seed=0)
    assert len(clock.history) == 1  # 1.3 s each: the second ends at 2.6 s + overhead
    assert clock.ask_seconds >= 0.3


def test_best_feasible_ratio_takes_the_largest_ratio_within_the_drop_bound(tmp_path):
    problem = lenet_staged(_landscape(tmp_path, eval_seconds=1.0), wall_seconds=1000.0)
    clock = timed_run(problem, run_random, seed=1)
    feasible = [m for _, m in clock.history if m["accuracy_drop"] <= 0.01]
    assert feasible and len(feasible) < len(clock.history)
    assert best_feasible_ratio(problem, clock) == max(m["compression_ratio"] for m in feasible)
    clock.history = [(c, m) for c, m in clock.history if m["accuracy_drop"] > 0.01]
    assert best_feasible_ratio(problem, clock) == 0.0


@pytest.mark.parametrize("method", ["ours", "tpe"])
def test_sequential_optimisers_run_against_the_wall_clock(tmp_path, method):
    pytest.importorskip("optuna")
    problem = lenet_staged(_landscape(tmp_path, eval_seconds=10.0), wall_seconds=65.0)
    clock = timed_run(problem, METHODS[method], seed=0)
    assert 1 <= len(clock.history) <= 6
    assert 0 < clock.ask_seconds
    assert sum(m["eval_seconds"] for _, m in clock.history) + clock.ask_seconds <= 65.0
    assert len({(c.params["0.sparsity"], c.params["1.bits"]) for c, _ in clock.history}) > 1


def test_markdown_reports_the_walltime_ratio_of_ours_against_tpe_and_random():
    entry = {"kind": "walltime", "wall_seconds": 600.0, "seconds": 3.0}
    results = {
        "lenet-staged": {
            "ours": {
                **entry,
                "scores": [60, 65],
                "median": 65,
                "min": 60,
                "max": 65,
                "trials": [10, 11],
                "ask_seconds": [5.0, 6.0],
            },  # fmt: skip
            "tpe": {
                **entry,
                "scores": [50],
                "median": 50,
                "min": 50,
                "max": 50,
                "trials": [12],
                "ask_seconds": [0.1],
            },  # fmt: skip
            "random": {
                **entry,
                "scores": [40],
                "median": 40,
                "min": 40,
                "max": 40,
                "trials": [12],
                "ask_seconds": [0.0],
            },  # fmt: skip
        }
    }
    table = markdown(results)
    assert "best feasible compression ratio at equal simulated wall time" in table
    assert "| ours | 65 | 60 - 65 | 2 | 3 |" in table
    assert "Median best feasible ratio of ours against tpe 1.30x, random 1.62x." in table
    assert "Budget 600 s simulated" in table


def test_lenet_staged_target_is_the_best_feasible_ratio_on_the_interpolated_landscape(tmp_path):
    problem = lenet_staged(_landscape(tmp_path))
    # 2 bits, drop 0.2 (s - 0.8) + 0.006 <= 0.01 at s = 0.82: size 200 kB * 2**-0.2 * 2 / 32
    assert problem.target == pytest.approx(1e6 / (200_000 * 2**-0.2 * 2 / 32), rel=1e-3)
