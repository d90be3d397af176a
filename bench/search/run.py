"""Run the search benchmark: our optimiser against random, Sobol, grid and Optuna's TPE.

Every method gets the same budget on each problem, 10 seeds; the table gives the median and
the spread (min-max) of the score: evaluations to reach the target (``reach`` problems; a
run that never reaches it counts as budget + 1) or the feasible hypervolume after the budget
as a fraction of the best known one (``hypervolume`` problems). ::

    .venv/bin/python -m bench.search.run                 # every problem, all methods
    .venv/bin/python -m bench.search.run --problems lenet-4p --methods ours,tpe --seeds 3

Optuna is a benchmark-only dependency (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import math
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
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for problem_name in args.problems.split(","):
        problem = PROBLEMS[problem_name]()
        for method_name in args.methods.split(","):
            if method_name == "two-phase" and problem.kind != "reach":
                continue
            start = time.perf_counter()
            scores = [
                score(problem, METHODS[method_name](problem, seed)) for seed in range(args.seeds)
            ]
            entry = {
                "kind": problem.kind,
                "scores": scores,
                "median": statistics.median(scores),
                "min": min(scores),
                "max": max(scores),
                "seconds": time.perf_counter() - start,
            }
            results.setdefault(problem_name, {})[method_name] = entry
            args.out.write_text(json.dumps(results, indent=1))
            print(problem_name, method_name, entry, flush=True)


SCORE_NAMES = {
    "reach": "evaluations to reach the target (lower is better; budget + 1 = never)",
    "hypervolume": "feasible hypervolume / best known (higher is better)",
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
        if kind == "hypervolume" and ours is not None:
            ratios = [
                f"{other} {_ratio(ours, methods[other]['median'])}"
                for other in ("tpe", "random")
                if other in methods
            ]
            lines += ["", "Median hypervolume of ours against " + ", ".join(ratios) + "."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
