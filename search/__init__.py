"""Bayesian search over compression strategies: a pure, stateless library.

It knows nothing of models, HTTP or databases: give it the search space, the objective and
the trials so far, and it proposes the next candidates. An ask/tell loop on a toy function::

    from search import Objective, Observation, SearchSpace, best_feasible, propose

    space = SearchSpace.from_spec({"strategies": [{"name": "prune", "steps": [
        {"op": "prune", "sparsity": {"min": 0.0, "max": 1.0}}]}]})
    objective = Objective.from_spec({"maximize": "compression_ratio",
                                     "constraints": [{"metric": "accuracy_drop", "max": 0.5}]})
    history = []
    for _ in range(10):
        (proposal,) = propose(space, objective, history, pending=[], n=1, seed=0)
        s = proposal.candidate.params["0.sparsity"]
        history.append(Observation(proposal.candidate, {"compression_ratio": s, "accuracy_drop": s**3}))
    best = history[best_feasible(history, objective)]   # s close to 0.5 ** (1 / 3)
"""

from .metric_table import METRIC_TABLE, METRICS, Metric
from .noise import measurement_variances
from .objective import Constraint, Objective, ObjectiveError
from .observation import Observation, Proposal
from .optimizer import (
    SEARCH_METHODS,
    SearchSettings,
    SearchSettingsError,
    default_n_initial,
    predicted_gain,
    promotion_scores,
    propose,
)
from .pareto import best_feasible, feasible_front, hypervolume, infer_reference, pareto_front
from .space import Candidate, Param, SearchSpace, SearchSpaceError, StrategySpace
from .stopping import progress_curve, stop_reason

__all__ = [
    "METRICS",
    "METRIC_TABLE",
    "SEARCH_METHODS",
    "Candidate",
    "Constraint",
    "Metric",
    "Objective",
    "ObjectiveError",
    "Observation",
    "Param",
    "Proposal",
    "SearchSettings",
    "SearchSettingsError",
    "SearchSpace",
    "SearchSpaceError",
    "StrategySpace",
    "best_feasible",
    "default_n_initial",
    "feasible_front",
    "hypervolume",
    "infer_reference",
    "measurement_variances",
    "pareto_front",
    "predicted_gain",
    "promotion_scores",
    "progress_curve",
    "propose",
    "stop_reason",
]
