"""The search space: compression strategies whose step parameters may be ranges or choices.

A job's ``search_space`` lists strategies; each is an ordered list of steps (``{"op": ...}``
plus parameters). A parameter is

* a range ``{"min": a, "max": b}``, optionally ``"type": "int"`` and/or ``"log": true``,
* a choice ``{"choices": [...]}``, or
* a fixed value (number, string, list such as ``"block": [4, 4]``), kept as given.

:class:`SearchSpace` parses and validates that JSON and maps candidates to and from the unit
cube that the optimiser works in: one column per free parameter of every strategy (columns of
the strategies a candidate does not use are set to 0.5), plus one last column for the strategy
index when there are two strategies or more. Op names and their parameters are validated by
``operators/``, not here.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "Candidate",
    "Param",
    "SearchSpace",
    "SearchSpaceError",
    "StrategySpace",
]

ParamKind = Literal["float", "int", "choice"]

_RANGE_KEYS = frozenset({"min", "max", "type", "log"})
_CHOICE_KEYS = frozenset({"choices"})
_INACTIVE = 0.5  # encoded value of the columns a candidate's strategy does not use
#: At most this many (strategy, categorical values) combinations are enumerated; beyond it,
#: choices of strings are searched as ordered values like numeric choices.
MAX_ENUMERATED = 32


class SearchSpaceError(ValueError):
    """An invalid ``search_space``; ``field`` names the JSON path at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# Step keys whose value is an object of settings (a stage's schedule or fine-tuning): their
# inner values may be ranges or choices, with paths such as "0.schedule.stages".
NESTED_KEYS = ("schedule", "finetune")


@dataclass(frozen=True)
class Param:
    """One free parameter of a strategy.

    ``path`` is ``"<step index>.<param name>"``, e.g. ``"0.sparsity"``, or
    ``"<step index>.<stage key>.<setting>"``, e.g. ``"0.schedule.stages"``. Ranges (``float``,
    ``int``) have ``low < high`` and may be searched in log space; choices list their values.
    """

    path: str
    kind: ParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def categorical(self) -> bool:
        """A choice among values that are not all numbers (e.g. dtypes): unordered."""
        return self.kind == "choice" and not all(_is_number(c) for c in self.choices or ())

    def unit_values(self) -> list[float]:
        """The encoded values of a choice (its only possible columns values)."""
        assert self.choices is not None
        return [self.to_unit(c) for c in self.choices]

    @property
    def step_index(self) -> int:
        return int(self.path.split(".", 1)[0])

    @property
    def name(self) -> str:
        return self.path.split(".", 1)[1]

    def to_unit(self, value: Any) -> float:
        """Map a value of this parameter to [0, 1]."""
        if self.kind == "choice":
            assert self.choices is not None
            index = _choice_index(self.choices, value)
            if index is None:
                raise ValueError(f"{self.path}: {value!r} is not one of {list(self.choices)}")
            return _INACTIVE if len(self.choices) == 1 else index / (len(self.choices) - 1)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.path}: {value!r} is not a finite number")
        lo, hi = self._bounds()
        if self.log:
            if value <= 0:
                raise ValueError(f"{self.path}: {value!r} must be > 0 on a log range")
            value = math.log(value)
        return min(1.0, max(0.0, (value - lo) / (hi - lo)))

    def from_unit(self, u: float) -> Any:
        """Map a point of [0, 1] (clamped) to a value: ints and choices are rounded."""
        u = min(1.0, max(0.0, float(u))) if math.isfinite(u) else _INACTIVE
        if self.kind == "choice":
            assert self.choices is not None
            return self.choices[round(u * (len(self.choices) - 1))]
        lo, hi = self._bounds()
        value = lo + u * (hi - lo)
        if self.log:
            value = math.exp(value)
        assert self.low is not None and self.high is not None
        value = min(self.high, max(self.low, value))
        if self.kind == "int":
            return int(min(self.high, max(self.low, round(value))))
        return float(value)

    def _bounds(self) -> tuple[float, float]:
        assert self.low is not None and self.high is not None
        if self.log:
            return math.log(self.low), math.log(self.high)
        return float(self.low), float(self.high)


@dataclass(frozen=True)
class StrategySpace:
    """A named strategy: its steps as given in the spec and its free parameters."""

    name: str
    steps: list[dict]
    params: list[Param]


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: a strategy and a value for each of its ``Param.path``."""

    strategy: str
    params: dict[str, Any] = field(default_factory=dict)

    def steps(self, space: SearchSpace) -> list[dict]:
        """The concrete steps of this candidate (see :meth:`SearchSpace.materialize`)."""
        return space.materialize(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict ``{"strategy": ..., "params": {...}}``."""
        return {"strategy": self.strategy, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_dict`."""
        return cls(strategy=str(data["strategy"]), params=dict(data.get("params") or {}))

    def key(self) -> str:
        """A canonical JSON string: the identity of the candidate once stored."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def __hash__(self) -> int:
        return hash(self.key())


class SearchSpace:
    """The strategies of a job and the encoding of their candidates into ``[0, 1]^dim``."""

    def __init__(self, strategies: Sequence[StrategySpace]) -> None:
        if not strategies:
            raise SearchSpaceError("search_space.strategies", "at least one strategy is required")
        self.strategies: list[StrategySpace] = list(strategies)
        self._by_name = {s.name: i for i, s in enumerate(self.strategies)}
        if len(self._by_name) != len(self.strategies):
            raise SearchSpaceError("search_space.strategies", "strategy names must be unique")
        offsets, column = [], 0
        for strategy in self.strategies:
            offsets.append(column)
            column += len(strategy.params)
        self._offsets = offsets
        self._n_param_columns = column

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Parse and validate a job's ``search_space`` JSON.

        Raises:
            SearchSpaceError: naming the JSON path at fault, e.g.
                ``search_space.strategies[1].steps[0].sparsity: min must be < max``.
        """
        root = "search_space"
        if not isinstance(spec, Mapping):
            raise SearchSpaceError(root, "must be an object with a 'strategies' list")
        _reject_unknown(spec, {"strategies"}, root)
        raw = spec.get("strategies")
        if not isinstance(raw, list) or not raw:
            raise SearchSpaceError(f"{root}.strategies", "must be a non-empty list")
        strategies, seen = [], {}
        for i, item in enumerate(raw):
            where = f"{root}.strategies[{i}]"
            strategy = _parse_strategy(item, where)
            if strategy.name in seen:
                raise SearchSpaceError(
                    f"{where}.name",
                    f"duplicate strategy name {strategy.name!r} (also strategies[{seen[strategy.name]}])",
                )
            seen[strategy.name] = i
            strategies.append(strategy)
        return cls(strategies)

    # --------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        """Columns of the encoding: every param of every strategy, plus the strategy index."""
        return self._n_param_columns + (1 if self.n_strategies >= 2 else 0)

    @property
    def n_strategies(self) -> int:
        return len(self.strategies)

    @property
    def strategy_column(self) -> int | None:
        """Index of the strategy column, or None with a single strategy."""
        return self._n_param_columns if self.n_strategies >= 2 else None

    def strategy(self, name: str) -> StrategySpace:
        """The strategy called ``name``; ``KeyError`` if there is none."""
        try:
            return self.strategies[self._by_name[name]]
        except KeyError:
            raise KeyError(
                f"unknown strategy {name!r}; known: {[s.name for s in self.strategies]}"
            ) from None

    def strategy_columns(self, name: str) -> range:
        """The encoded columns holding the params of strategy ``name``."""
        index = self._by_name[self.strategy(name).name]
        start = self._offsets[index]
        return range(start, start + len(self.strategies[index].params))

    def strategy_features(self, name: str) -> dict[int, float]:
        """Fixed column values selecting strategy ``name``: its index and the other
        strategies' columns at 0.5 (for ``optimize_acqf_mixed``'s ``fixed_features_list``)."""
        own = set(self.strategy_columns(name))
        features = {c: _INACTIVE for c in range(self._n_param_columns) if c not in own}
        if self.strategy_column is not None:
            features[self.strategy_column] = self._by_name[name] / (self.n_strategies - 1)
        return features

    def _categorical_params(self, strategy: StrategySpace) -> list[tuple[int, Param]]:
        columns = self.strategy_columns(strategy.name)
        return [(c, p) for c, p in zip(columns, strategy.params, strict=True) if p.categorical]

    def _enumerates_choices(self) -> bool:
        combinations = sum(
            math.prod(len(p.choices or ()) for _, p in self._categorical_params(s))
            for s in self.strategies
        )
        return combinations <= MAX_ENUMERATED

    @property
    def categorical_columns(self) -> list[int]:
        """Unordered columns: the strategy column and, when the combinations are few enough
        to enumerate (:data:`MAX_ENUMERATED`), the columns of choices of strings. The model
        gives them a categorical kernel (no input scaling) and the optimiser enumerates them."""
        columns = []
        if self._enumerates_choices():
            columns = [c for s in self.strategies for c, _ in self._categorical_params(s)]
        if self.strategy_column is not None:
            columns.append(self.strategy_column)
        return sorted(columns)

    def fixed_features_list(self) -> list[dict[int, float]]:
        """Every combination of strategy and categorical values, as the fixed column values
        of ``optimize_acqf_mixed`` (the other strategies' columns at 0.5)."""
        enumerate_choices = self._enumerates_choices()
        combos = []
        for strategy in self.strategies:
            base = self.strategy_features(strategy.name)
            categorical = self._categorical_params(strategy) if enumerate_choices else []
            values = [[(c, u) for u in p.unit_values()] for c, p in categorical]
            for assignment in itertools.product(*values):
                combos.append({**base, **dict(assignment)})
        return combos

    def encode(self, candidate: Candidate) -> Tensor:
        """Map a candidate to a ``dim``-vector in ``[0, 1]`` (double precision)."""
        strategy = self.strategy(candidate.strategy)
        x = torch.full((self.dim,), _INACTIVE, dtype=torch.double)
        for column, param in zip(
            self.strategy_columns(strategy.name), strategy.params, strict=True
        ):
            if param.path not in candidate.params:
                raise ValueError(f"candidate of {strategy.name!r} has no value for {param.path!r}")
            x[column] = param.to_unit(candidate.params[param.path])
        if self.strategy_column is not None:
            x[self.strategy_column] = self._by_name[strategy.name] / (self.n_strategies - 1)
        return x

    def decode(self, x: Tensor) -> Candidate:
        """Map a ``dim``-vector of ``[0, 1]`` to a candidate; snaps the strategy index and
        rounds ints and choices (values outside ``[0, 1]`` are clamped)."""
        x = torch.as_tensor(x, dtype=torch.double).reshape(-1)
        if x.numel() != self.dim:
            raise ValueError(f"expected {self.dim} columns, got {x.numel()}")
        index = 0
        if self.strategy_column is not None:
            u = float(x[self.strategy_column])
            u = min(1.0, max(0.0, u)) if math.isfinite(u) else 0.0
            index = round(u * (self.n_strategies - 1))
        strategy = self.strategies[index]
        columns = self.strategy_columns(strategy.name)
        params = {
            p.path: p.from_unit(float(x[c])) for c, p in zip(columns, strategy.params, strict=True)
        }
        return Candidate(strategy=strategy.name, params=params)

    def snap(self, X: Tensor) -> Tensor:
        """``encode(decode(x))`` for each row of a ``... x dim`` tensor: the encoded point
        that will actually be evaluated (ints, choices and the strategy rounded)."""
        flat = X.reshape(-1, self.dim)
        snapped = (
            torch.stack([self.encode(self.decode(row)) for row in flat]) if len(flat) else flat
        )
        return snapped.to(X).reshape(X.shape)

    # ------------------------------------------------------------ materialise
    def materialize(self, candidate: Candidate) -> list[dict]:
        """The candidate's concrete steps: ranges and choices replaced by its values,
        fixed values kept."""
        strategy = self.strategy(candidate.strategy)
        steps = copy.deepcopy(strategy.steps)
        for param in strategy.params:
            if param.path not in candidate.params:
                raise ValueError(f"candidate of {strategy.name!r} has no value for {param.path!r}")
            *outer, name = param.name.split(".")
            target = steps[param.step_index]
            for key in outer:  # a stage setting (schedule, finetune) of the step
                target = target[key]
            target[name] = copy.deepcopy(candidate.params[param.path])
        return steps

    def __repr__(self) -> str:
        names = [s.name for s in self.strategies]
        return f"SearchSpace(strategies={names}, dim={self.dim})"


# -------------------------------------------------------------------- helpers
def _reject_unknown(obj: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise SearchSpaceError(f"{where}.{unknown[0]}", f"unknown key; allowed: {sorted(allowed)}")


def _parse_strategy(item: Any, where: str) -> StrategySpace:
    if not isinstance(item, Mapping):
        raise SearchSpaceError(where, "must be an object with 'name' and 'steps'")
    _reject_unknown(item, {"name", "steps"}, where)
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SearchSpaceError(f"{where}.name", "must be a non-empty string")
    steps = item.get("steps")
    if not isinstance(steps, list) or not steps:
        raise SearchSpaceError(f"{where}.steps", "must be a non-empty list of steps")
    params: list[Param] = []
    for j, step in enumerate(steps):
        step_where = f"{where}.steps[{j}]"
        if not isinstance(step, Mapping):
            raise SearchSpaceError(step_where, "must be an object such as {'op': 'prune', ...}")
        if not isinstance(step.get("op"), str):
            raise SearchSpaceError(f"{step_where}.op", "must be a string naming the operation")
        for key, value in step.items():
            if key in NESTED_KEYS:  # a stage setting: its own values may be ranges or choices
                if not isinstance(value, Mapping):
                    raise SearchSpaceError(f"{step_where}.{key}", "must be an object")
                for inner, inner_value in value.items():
                    param = _parse_param(
                        f"{j}.{key}.{inner}", inner_value, f"{step_where}.{key}.{inner}"
                    )
                    if param is not None:
                        params.append(param)
                continue
            param = _parse_param(f"{j}.{key}", value, f"{step_where}.{key}")
            if param is not None:
                params.append(param)
    return StrategySpace(name=name, steps=copy.deepcopy(list(steps)), params=params)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_param(path: str, value: Any, where: str) -> Param | None:
    """A :class:`Param` for a range or choice, ``None`` for a fixed value."""
    if not isinstance(value, Mapping):
        return None
    if "choices" in value:
        _reject_unknown(value, _CHOICE_KEYS, where)
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}.choices", "must be a non-empty list")
        keys = [json.dumps(c, sort_keys=True, default=str) for c in choices]
        if len(set(keys)) != len(keys):
            raise SearchSpaceError(f"{where}.choices", "must not repeat a value")
        return Param(path=path, kind="choice", choices=tuple(choices))
    if not set(value) & {"min", "max"}:
        raise SearchSpaceError(
            where, "an object parameter must be a range {min, max} or a choice {choices}"
        )
    _reject_unknown(value, _RANGE_KEYS, where)
    for bound in ("min", "max"):
        if bound not in value:
            raise SearchSpaceError(f"{where}.{bound}", "is required in a range")
        if not _is_number(value[bound]) or not math.isfinite(value[bound]):
            raise SearchSpaceError(f"{where}.{bound}", "must be a finite number")
    kind = value.get("type", "float")
    if kind not in ("float", "int"):
        raise SearchSpaceError(f"{where}.type", "must be 'int' or 'float'")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}.log", "must be true or false")
    low, high = value["min"], value["max"]
    if kind == "int":
        for bound, number in (("min", low), ("max", high)):
            if float(number) != int(number):
                raise SearchSpaceError(f"{where}.{bound}", "must be an integer for an int range")
        low, high = int(low), int(high)
    if not low < high:
        raise SearchSpaceError(where, "min must be < max")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}.min", "must be > 0 for a log range")
    return Param(path=path, kind=kind, low=low, high=high, log=log)


def _choice_index(choices: tuple, value: Any) -> int | None:
    """Index of ``value`` among ``choices``, comparing JSON forms (so (4, 4) == [4, 4])."""
    for i, choice in enumerate(choices):
        if choice == value:
            return i
    key = json.dumps(value, sort_keys=True, default=str)
    for i, choice in enumerate(choices):
        if json.dumps(choice, sort_keys=True, default=str) == key:
            return i
    return None
