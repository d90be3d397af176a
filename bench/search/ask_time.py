"""Time one ``propose()`` call (an ``ask``) at a large history: CPU and wall seconds.

A 3-parameter space (sparsity, integer bits, log-scaled scale), a smooth toy landscape, and
``--trials`` finished trials; each case is timed ``--repeats`` times with different seeds
after one warm-up call, and the medians (and max) are printed as a markdown table. CPU time
is the process's (``time.process_time``): the figure that does not depend on how busy a
shared machine is. ::

    .venv/bin/python -m bench.search.ask_time --trials 200 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from search import Candidate, Objective, Observation, SearchSpace, propose

SPACE = SearchSpace.from_spec(
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
CONSTRAINT = [{"metric": "accuracy_drop", "max": 0.05}]
SINGLE = Objective.from_spec({"maximize": "compression_ratio", "constraints": CONSTRAINT})
PARETO = Objective.from_spec(
    {
        "pareto": [{"metric": "accuracy", "goal": "max"}, {"metric": "size_bytes", "goal": "min"}],
        "constraints": CONSTRAINT,
    }
)


def metrics(candidate: Candidate) -> dict[str, float]:
    """A smooth toy: the ratio grows with every column, the accuracy drop grows faster."""
    x = SPACE.encode(candidate)
    drop = float((x**3).mean()) * 0.2
    return {
        "compression_ratio": 1.0 / (1.02 - float(x[0])) + float(x[1:].sum()),
        "accuracy_drop": drop,
        "accuracy": 0.98 - drop,
        "size_bytes": 1e6 * (1.02 - float(x[0])) / (1.0 + float(x[1:].sum())),
    }


def history(n: int) -> list[Observation]:
    """``n`` finished trials at uniformly random points (seeded)."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(n, SPACE.dim, generator=generator, dtype=torch.double)
    return [Observation(c, metrics(c)) for c in (SPACE.decode(x) for x in points)]


def time_case(
    objective: Objective, trials: list[Observation], pending: list[Candidate], repeats: int
) -> tuple[list[float], list[float], str]:
    """CPU and wall seconds of ``repeats`` calls, and the method the proposals used."""
    propose(SPACE, objective, trials, pending, 1, seed=0)  # warm-up
    cpu, wall, method = [], [], ""
    for seed in range(1, repeats + 1):
        c0, w0 = time.process_time(), time.perf_counter()
        (proposal,) = propose(SPACE, objective, trials, pending, 1, seed=seed)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        method = proposal.reason["method"]
    return cpu, wall, method


def main() -> None:
    parser = argparse.ArgumentParser(description="time propose() at a large history")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    trials = history(args.trials)
    one_pending = [history(args.trials + 1)[-1].candidate]
    cases = [
        ("max ratio, 1 constraint, 1 point", SINGLE, []),
        ("max ratio, 1 constraint, 1 point + 1 pending", SINGLE, one_pending),
        ("Pareto accuracy/size, 1 constraint, 1 point", PARETO, []),
    ]
    print(f"{args.trials} trials, {args.repeats} calls per case (median, max)\n")
    print("| case | method | CPU s median (max) | wall s median (max) |")
    print("|---|---|---|---|")
    for name, objective, pending in cases:
        cpu, wall, method = time_case(objective, trials, pending, args.repeats)
        print(
            f"| {name} | {method} | {statistics.median(cpu):.2f} ({max(cpu):.2f}) "
            f"| {statistics.median(wall):.2f} ({max(wall):.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
