"""Benchmark problems: a search space, an objective, a metric function and a score.

* ``toy-1d``: maximise ``s`` subject to ``s**3 <= 0.5`` (optimum ``0.5 ** (1/3)``).
* ``toy-pareto``: BoTorch's Branin-Currin (two objectives, known maximum hypervolume) on a
  two-parameter range space, with a constraint that cuts the front.
* ``lenet-1d``: LeNet-300-100 on MNIST, global magnitude pruning; maximise the compression
  ratio subject to ``accuracy_drop <= 0.01``; linear interpolation of measured points.
* ``lenet-4p``: the per-layer sparsities of fc1, fc2, fc3 and float32 or float16 storage (two
  strategies); Pareto front of accuracy and size, ``accuracy_drop <= 0.02``; trilinear
  interpolation of measured points.
* ``lenet-staged``: the default space's ``deep-compression`` strategy (prune in 3 cubic
  stages, cluster to 2-5 bits, float16); maximise the compression ratio subject to
  ``accuracy_drop <= 0.01`` at an equal simulated wall-time budget; metrics and the measured
  evaluation seconds interpolated linearly in sparsity (log size) at each measured bit width.

The LeNet landscapes come from ``data/lenet300_mnist.json`` and
``data/lenet300_mnist_staged.json`` (see :mod:`.make_landscape`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from botorch.test_functions.multi_objective import BraninCurrin
from scipy.interpolate import RegularGridInterpolator

from search import Candidate, Objective, SearchSpace, hypervolume

DATA = Path(__file__).parent / "data" / "lenet300_mnist.json"
STAGED_DATA = Path(__file__).parent / "data" / "lenet300_mnist_staged.json"
STAGED_SPACE = {
    "strategies": [
        {
            "name": "deep-compression",
            "steps": [
                {
                    "op": "prune",
                    "sparsity": {"min": 0.8, "max": 0.99},
                    "schedule": {"stages": 3, "ramp": "cubic"},
                },
                {"op": "cluster", "bits": {"min": 2, "max": 5, "type": "int"}},
                {"op": "quantize", "dtype": "float16"},
            ],
        }
    ]
}
Metrics = dict[str, float]


@dataclass
class Problem:
    """``evaluate`` maps a candidate to its metrics; ``target`` is what the score measures:
    for ``kind="reach"`` the best feasible value of ``param`` (within ``tolerance``), for
    ``kind="hypervolume"`` the reference point and the best known hypervolume; for
    ``kind="walltime"`` (metrics include ``eval_seconds``) the best feasible ``compression_ratio``
    once ``wall_seconds`` of simulated wall time are spent, ``budget`` capping the trials."""

    name: str
    space: SearchSpace
    objective: Objective
    evaluate: Callable[[Candidate], Metrics]
    kind: str
    budget: int
    param: str = ""
    target: float = math.nan
    tolerance: float = 0.01
    reference: dict[str, float] = field(default_factory=dict)
    best_hypervolume: float = math.nan
    wall_seconds: float = math.nan

    def reached(self, candidate: Candidate, metrics: Metrics) -> bool:
        """Whether a ``reach`` problem's evaluation is feasible and close enough to the target."""
        return self.objective.is_feasible(metrics) and (
            candidate.params[self.param] >= self.target - self.tolerance
        )

    def hypervolume(self, history: list[Metrics]) -> float:
        feasible = [m for m in history if self.objective.is_feasible(m)]
        return hypervolume(feasible, self.objective.metrics, self.reference)


def _range_space(name: str, ranges: dict[str, tuple[float, float]]) -> SearchSpace:
    steps = [{"op": op, key: {"min": lo, "max": hi}} for (op, key), (lo, hi) in _split(ranges)]
    return SearchSpace.from_spec({"strategies": [{"name": name, "steps": steps}]})


def _split(ranges: dict[str, tuple[float, float]]):
    return [(tuple(k.split(".")), v) for k, v in ranges.items()]


def toy_1d() -> Problem:
    space = _range_space("prune", {"prune.sparsity": (0.0, 1.0)})
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.5}]}
    )

    def evaluate(c: Candidate) -> Metrics:
        s = c.params["0.sparsity"]
        return {"compression_ratio": s, "accuracy_drop": s**3}

    return Problem("toy-1d", space, objective, evaluate, "reach", 15, "0.sparsity", 0.5 ** (1 / 3))


def toy_pareto() -> Problem:
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {
                    "name": "bc",
                    "steps": [
                        {"op": "x", "a": {"min": 0.0, "max": 1.0}},
                        {"op": "y", "b": {"min": 0.0, "max": 1.0}},
                    ],
                }
            ]
        }
    )
    objective = Objective.from_spec(
        {
            "pareto": [{"metric": "loss", "goal": "min"}, {"metric": "latency_ms", "goal": "min"}],
            "constraints": [{"metric": "macs", "max": 0.8}],
        }
    )
    function = BraninCurrin()

    def evaluate(c: Candidate) -> Metrics:
        x = torch.tensor([[c.params["0.a"], c.params["1.b"]]], dtype=torch.double)
        branin, currin = function(x)[0].tolist()
        return {"loss": branin, "latency_ms": currin, "macs": float(x.sum())}

    reference = {"loss": 18.0, "latency_ms": 6.0}
    problem = Problem("toy-pareto", space, objective, evaluate, "hypervolume", 20)
    problem.reference = reference
    problem.best_hypervolume = _dense_hypervolume(problem, 101)
    return problem


def _dense_hypervolume(problem: Problem, per_side: int) -> float:
    """Hypervolume of a dense grid of the space (the best known front)."""
    axis = np.linspace(0, 1, per_side)
    points = []
    for strategy in problem.space.strategies:
        columns = list(problem.space.strategy_columns(strategy.name))
        for values in np.stack(np.meshgrid(*[axis] * len(columns)), -1).reshape(-1, len(columns)):
            x = torch.full((problem.space.dim,), 0.5, dtype=torch.double)
            x[columns] = torch.tensor(values, dtype=torch.double)
            features = problem.space.strategy_features(strategy.name)
            for c, u in features.items():
                x[c] = u
            points.append(problem.evaluate(problem.space.decode(x)))
    return problem.hypervolume(points)


def _landscape() -> dict:
    return json.loads(DATA.read_text())


def lenet_1d() -> Problem:
    data = _landscape()
    rows = data["global"]
    s = np.array([r["sparsity"] for r in rows])
    accuracy = np.array([r["accuracy"] for r in rows])
    base = data["baseline"]
    space = _range_space("prune", {"prune.sparsity": (float(s.min()), float(s.max()))})
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )

    def evaluate(c: Candidate) -> Metrics:
        return _interp_metrics(base, rows, c.params["0.sparsity"])

    fine = np.linspace(s.min(), s.max(), 100_001)
    feasible = [x for x in fine if base["accuracy"] - np.interp(x, s, accuracy) <= 0.01]
    return Problem("lenet-1d", space, objective, evaluate, "reach", 15, "0.sparsity", max(feasible))


def lenet_4p() -> Problem:
    data = _landscape()
    layers = ("fc1", "fc2", "fc3")
    axes = [sorted({r[layer] for r in data["layers"]}) for layer in layers]
    base = data["baseline"]
    interpolators = {}
    for storage in ("float32", "float16"):
        shape = [len(a) for a in axes]
        accuracy, log_size = np.zeros(shape), np.zeros(shape)
        for r in data["layers"]:
            index = tuple(a.index(r[layer]) for a, layer in zip(axes, layers, strict=True))
            accuracy[index] = r[storage]["accuracy"]
            log_size[index] = math.log(r[storage]["size_bytes"])
        interpolators[storage] = (
            RegularGridInterpolator(axes, accuracy),
            RegularGridInterpolator(axes, log_size),
        )
    steps = [
        {
            "op": "prune",
            "sparsity": {"min": a[0], "max": a[-1]},
            "scope": "layer",
            "include": f"^{layer}$",
        }
        for a, layer in zip(axes, layers, strict=True)
    ]
    space = SearchSpace.from_spec(
        {
            "strategies": [
                {"name": "prune-layers", "steps": steps},
                {
                    "name": "prune-layers+fp16",
                    "steps": [*steps, {"op": "quantize", "dtype": "float16"}],
                },
            ]
        }
    )
    objective = Objective.from_spec(
        {
            "pareto": [
                {"metric": "accuracy", "goal": "max"},
                {"metric": "size_bytes", "goal": "min"},
            ],
            "constraints": [{"metric": "accuracy_drop", "max": 0.02}],
        }
    )

    def evaluate(c: Candidate) -> Metrics:
        point = [[c.params[f"{i}.sparsity"] for i in range(3)]]
        acc_fn, size_fn = interpolators["float16" if c.strategy.endswith("fp16") else "float32"]
        acc = float(acc_fn(point)[0])
        size = float(math.exp(size_fn(point)[0]))
        return {
            "accuracy": acc,
            "accuracy_drop": base["accuracy"] - acc,
            "size_bytes": size,
            "compression_ratio": base["size_bytes"] / size,
        }

    problem = Problem("lenet-4p", space, objective, evaluate, "hypervolume", 20)
    problem.reference = {
        "accuracy": base["accuracy"] - 0.02,
        "size_bytes": 0.5 * base["size_bytes"],
    }
    problem.best_hypervolume = _dense_hypervolume(problem, 21)
    return problem


def _interp_metrics(base: Metrics, rows: list[dict], x: float) -> Metrics:
    """Metrics at sparsity ``x`` by linear interpolation of ``rows`` (sorted by sparsity; log
    size; ``eval_seconds`` too where measured); ``x`` outside the measured range is an error,
    not an extrapolation."""
    s = [r["sparsity"] for r in rows]
    if not s[0] - 1e-12 <= x <= s[-1] + 1e-12:
        raise ValueError(f"sparsity {x} outside the measured {s[0]}-{s[-1]}")
    acc = float(np.interp(x, s, [r["accuracy"] for r in rows]))
    size = float(np.exp(np.interp(x, s, np.log([r["size_bytes"] for r in rows]))))
    metrics = {
        "accuracy": acc,
        "accuracy_drop": base["accuracy"] - acc,
        "size_bytes": size,
        "compression_ratio": base["size_bytes"] / size,
    }
    if "eval_seconds" in rows[0]:
        metrics["eval_seconds"] = float(np.interp(x, s, [r["eval_seconds"] for r in rows]))
    return metrics


def lenet_staged(path: Path = STAGED_DATA, wall_seconds: float = 600.0) -> Problem:
    data = json.loads(path.read_text())
    base = data["baseline"]
    by_bits: dict[int, list[dict]] = {}
    for r in sorted(data["points"], key=lambda r: r["sparsity"]):
        by_bits.setdefault(r["bits"], []).append(r)
    space = SearchSpace.from_spec(STAGED_SPACE)
    low, high = space.strategies[0].params[0].low, space.strategies[0].params[0].high
    missing = [b for b in range(2, 6) if b not in by_bits]
    uncovered = [
        b for b, rows in by_bits.items() if rows[0]["sparsity"] > low or rows[-1]["sparsity"] < high
    ]
    if missing or uncovered:
        raise ValueError(
            f"staged landscape lacks bits {missing} or covers too little at {uncovered}"
        )
    objective = Objective.from_spec(
        {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.01}]}
    )

    def evaluate(c: Candidate) -> Metrics:
        return _interp_metrics(base, by_bits[int(c.params["1.bits"])], c.params["0.sparsity"])

    fine = np.linspace(low, high, 2001)
    best = max(
        (m["compression_ratio"] for b in by_bits for x in fine
         if objective.is_feasible(m := _interp_metrics(base, by_bits[b], float(x)))),
        default=0.0,
    )  # fmt: skip
    problem = Problem("lenet-staged", space, objective, evaluate, "walltime", 1000)
    problem.wall_seconds = wall_seconds
    problem.target = best  # the best feasible ratio on the interpolated landscape
    return problem


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "toy-1d": toy_1d,
    "toy-pareto": toy_pareto,
    "lenet-1d": lenet_1d,
    "lenet-4p": lenet_4p,
    "lenet-staged": lenet_staged,
}
