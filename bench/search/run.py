"""Run the search benchmark: our optimiser against random, Sobol, grid and Optuna's TPE.

Every method gets the same budget on each problem, 10 seeds; the table gives the median and
the spread (min-max) of the score: evaluations to reach the target (``reach`` problems; a
run that never reaches it counts as budget + 1) or the feasible hypervolume after the budget
as a fraction of the best known one (``hypervolume`` problems).

``walltime`` problems (``lenet-staged``) give every method the same simulated wall-clock
budget instead: each trial costs the landscape's measured evaluation seconds at that point
(interpolated) plus the method's own ask time, measured in this run; the score is the best
feasible compression ratio among the trials that finished within the budget. ::

    .venv/bin/python -m bench.search.run                 # every problem, all methods
    .venv/bin/python -m bench.search.run --problems lenet-4p --methods ours,tpe --seeds 3
    .venv/bin/python -m bench.search.run --problems lenet-staged --methods ours,tpe,random \
        --seeds 5 --out bench/search/results_staged.json

Optuna is a benchmark-only dependency (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from search import Candidate, Observation, SearchSettings, propose

from .problems import PROBLEMS, Problem

Method = Callable[[Problem, int], list[Candidate]]  # a whole run: the candidates in order


def _unit_run(problem: Problem, points: torch.Tensor) -> list[Candidate]:
    return [problem.space.decode(x) for x in points[: problem.budget]]


def run_random(problem: Problem, seed: int) -> list[Candidate]:
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(problem.budget, problem.space.dim, generator=generator, dtype=torch.double)
    return _unit_run(problem, points)


def run_sobol(problem: Problem, seed: int) -> list[Candidate]:
    engine = torch.quasirandom.SobolEngine(problem.space.dim, scramble=True, seed=seed)
    return _unit_run(problem, engine.draw(problem.budget, dtype=torch.double))


def run_grid(problem: Problem, seed: int) -> list[Candidate]:
    """A full grid of cell midpoints per strategy, as fine as the budget allows, in a seeded
    random order; leftover evaluations are random points."""
    space = problem.space
    per_strategy = problem.budget // space.n_strategies
    points = []
    for strategy in space.strategies:
        columns = list(space.strategy_columns(strategy.name))
        levels = max(1, int(math.floor(per_strategy ** (1 / max(1, len(columns))) + 1e-9)))
        axis = (np.arange(levels) + 0.5) / levels
        for values in np.stack(np.meshgrid(*[axis] * len(columns)), -1).reshape(-1, len(columns)):
            x = torch.full((space.dim,), 0.5, dtype=torch.double)
            x[columns] = torch.tensor(values, dtype=torch.double)
            for c, u in space.strategy_features(strategy.name).items():
                x[c] = u
            points.append(x)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(points), generator=generator)
    grid = torch.stack([points[i] for i in order])
    rest = torch.rand(max(0, problem.budget - len(grid)), space.dim, generator=generator)
    return _unit_run(problem, torch.cat([grid, rest.to(grid)]))


def run_tpe(problem: Problem, seed: int) -> list[Candidate]:
    """Optuna's TPE (default settings), constraints through ``constraints_func``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", FutureWarning)  # constraints_func: still the TPE way in 5.0
    objective = problem.objective
    sampler = optuna.samplers.TPESampler(
        seed=seed, constraints_func=lambda trial: trial.user_attrs["constraints"]
    )
    directions = ["maximize" if goal == "max" else "minimize" for _, goal in objective.metrics]
    study = optuna.create_study(directions=directions, sampler=sampler)
    candidates = []
    for _ in range(problem.budget):
        trial = study.ask()
        names = [s.name for s in problem.space.strategies]
        name = trial.suggest_categorical("strategy", names) if len(names) > 1 else names[0]
        params = {}
        for p in problem.space.strategy(name).params:
            key = f"{name}/{p.path}"
            if p.kind == "choice":
                params[p.path] = trial.suggest_categorical(key, list(p.choices))
            elif p.kind == "int":
                params[p.path] = trial.suggest_int(key, p.low, p.high, log=p.log)
            else:
                params[p.path] = trial.suggest_float(key, p.low, p.high, log=p.log)
        candidate = Candidate(name, params)
        metrics = problem.evaluate(candidate)
        trial.set_user_attr("constraints", _violations(problem, metrics))
        values = [metrics[m] for m in objective.metric_names]
        study.tell(trial, values if len(values) > 1 else values[0])
        candidates.append(candidate)
    return candidates


def _violations(problem: Problem, metrics: dict[str, float]) -> list[float]:
    out = []
    for c in problem.objective.constraints:
        if c.max is not None:
            out.append(metrics[c.metric] - c.max)
        if c.min is not None:
            out.append(c.min - metrics[c.metric])
    return out


def run_ours(
    problem: Problem, seed: int, settings: SearchSettings | None = None
) -> list[Candidate]:
    history: list[Observation] = []
    settings = settings or SearchSettings()
    for _ in range(problem.budget):
        (proposal,) = propose(
            problem.space, problem.objective, history, [], 1, seed=seed, settings=settings
        )
        history.append(Observation(proposal.candidate, problem.evaluate(proposal.candidate)))
    return [obs.candidate for obs in history]


def run_two_phase(problem: Problem, seed: int) -> list[Candidate]:
    return run_ours(problem, seed, SearchSettings(method="two-phase"))


METHODS: dict[str, Method] = {
    "ours": run_ours,
    "two-phase": run_two_phase,
    "tpe": run_tpe,
    "random": run_random,
    "sobol": run_sobol,
    "grid": run_grid,
}


class BudgetSpent(Exception):
    """The simulated wall-clock budget ran out; the run stops."""


class WallClock:
    """A simulated wall clock for one run: the measured time the method spends between
    evaluations (its ask time, real, in this process) plus each evaluation's ``eval_seconds``
    (the landscape's measured seconds). Only trials that finish within the budget count."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.spent = 0.0
        self.ask_seconds = 0.0
        self.history: list[tuple[Candidate, dict[str, float]]] = []
        self._mark = time.perf_counter()

    def evaluate(self, candidate: Candidate, asked: float | None = None) -> dict[str, float]:
        """Charge the time since the last evaluation ended (or ``asked``), then the point's
        evaluation seconds; :class:`BudgetSpent` if the trial would end past the budget."""
        if asked is None:
            asked = time.perf_counter() - self._mark
        self.ask_seconds += asked
        metrics = self.problem.evaluate(candidate)
        self.spent += asked + metrics["eval_seconds"]
        if self.spent > self.problem.wall_seconds:
            raise BudgetSpent
        self.history.append((candidate, metrics))
        self._mark = time.perf_counter()
        return metrics


def timed_run(problem: Problem, method: Method, seed: int) -> WallClock:
    """Run ``method`` on ``problem`` against a :class:`WallClock`; candidates a method returns
    without evaluating them itself (random, Sobol, grid: ``budget`` points drawn up front) go
    through the clock afterwards, each charged an equal share of the measured drawing time."""
    clock = WallClock(problem)
    start = time.perf_counter()
    try:
        candidates = method(dataclasses.replace(problem, evaluate=clock.evaluate), seed)
        rest = candidates[len(clock.history) :]
        share = (time.perf_counter() - start) / max(1, len(rest)) if not clock.history else None
        for candidate in rest:
            clock.evaluate(candidate, share)
    except BudgetSpent:
        pass
    return clock


def best_feasible_ratio(problem: Problem, clock: WallClock) -> float:
    """The best feasible ``compression_ratio`` of the finished trials (0 if none)."""
    feasible = [m for _, m in clock.history if problem.objective.is_feasible(m)]
    return max((m["compression_ratio"] for m in feasible), default=0.0)


def score(problem: Problem, candidates: list[Candidate]) -> float:
    """Evaluations to reach the target (budget + 1 if never), or hypervolume / best known."""
    metrics = [problem.evaluate(c) for c in candidates]
    if problem.kind == "reach":
        for i, (c, m) in enumerate(zip(candidates, metrics, strict=True)):
            if problem.reached(c, m):
                return float(i + 1)
        return float(problem.budget + 1)
    return problem.hypervolume(metrics) / problem.best_hypervolume


def main() -> None:
    parser = argparse.ArgumentParser(description="search benchmark")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--methods", default="ours,two-phase,tpe,random,sobol,grid")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/search/results.json"))
    parser.add_argument("--markdown", action="store_true", help="print the tables and exit")
    parser.add_argument(
        "--wall-minutes", type=float, default=10.0, help="walltime problems' simulated budget"
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for problem_name in args.problems.split(","):
        problem = PROBLEMS[problem_name]()
        key = problem_name
        if problem.kind == "walltime":
            problem.wall_seconds = 60 * args.wall_minutes
            key = f"{problem_name} ({args.wall_minutes:g} min)"
        for method_name in args.methods.split(","):
            if method_name == "two-phase" and problem.kind != "reach":
                continue
            start = time.perf_counter()
            entry: dict = {"kind": problem.kind}
            if problem.kind == "walltime":
                clocks = [timed_run(problem, METHODS[method_name], s) for s in range(args.seeds)]
                scores = [best_feasible_ratio(problem, clock) for clock in clocks]
                entry["wall_seconds"] = problem.wall_seconds
                entry["landscape_best"] = problem.target
                entry["trials"] = [len(clock.history) for clock in clocks]
                entry["ask_seconds"] = [round(clock.ask_seconds, 2) for clock in clocks]
            else:
                method = METHODS[method_name]
                scores = [score(problem, method(problem, seed)) for seed in range(args.seeds)]
            entry |= {
                "scores": scores,
                "median": statistics.median(scores),
                "min": min(scores),
                "max": max(scores),
                "seconds": time.perf_counter() - start,
            }
            if problem.kind == "walltime":
                entry["load_average"] = list(os.getloadavg())
            results.setdefault(key, {})[method_name] = entry
            args.out.write_text(json.dumps(results, indent=1))
            print(key, method_name, entry, flush=True)


SCORE_NAMES = {
    "reach": "evaluations to reach the target (lower is better; budget + 1 = never)",
    "hypervolume": "feasible hypervolume / best known (higher is better)",
    "walltime": "best feasible compression ratio at equal simulated wall time (higher is better)",
}


def _ratio(ours: float, other: float) -> str:
    """``ours / other`` as ``"1.23x"``, or why there is no ratio."""
    if other > 0:
        return f"{ours / other:.2f}x"
    return "unbounded (its median is 0)" if ours > 0 else "undefined (both medians are 0)"


def markdown(results: dict) -> str:
    """The results as one markdown table per problem (median and min-max over seeds); for a
    hypervolume problem, our median against TPE's and random search's."""
    lines = []
    for problem_name, methods in results.items():
        kind = next((e["kind"] for e in methods.values() if "kind" in e), None)
        title = f"**{problem_name}**" + (f": {SCORE_NAMES[kind]}" if kind else "")
        lines += [title, "", "| method | median | min - max | seeds | seconds |"]
        lines.append("|---|---|---|---|---|")
        for method_name, e in methods.items():
            lines.append(
                f"| {method_name} | {e['median']:.3g} | {e['min']:.3g} - {e['max']:.3g} "
                f"| {len(e['scores'])} | {e['seconds']:.0f} |"
            )
        ours = methods.get("ours", {}).get("median")
        if kind == "walltime":
            e = next(iter(methods.values()))
            lines += [
                "",
                f"Budget {e['wall_seconds']:.0f} s simulated per run (measured evaluation "
                "seconds + measured ask time); best feasible ratio on the interpolated "
                f"landscape {e.get('landscape_best', math.nan):.3g}; trials per run: "
                + "; ".join(f"{m} {e['trials']}" for m, e in methods.items())
                + "; ask seconds per run: "
                + "; ".join(f"{m} {e['ask_seconds']}" for m, e in methods.items())
                + ".",
            ]
        if kind in ("hypervolume", "walltime") and ours is not None:
            ratios = [
                f"{other} {_ratio(ours, methods[other]['median'])}"
                for other in ("tpe", "random")
                if other in methods
            ]
            what = "hypervolume" if kind == "hypervolume" else "best feasible ratio"
            lines += ["", f"Median {what} of ours against " + ", ".join(ratios) + "."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
