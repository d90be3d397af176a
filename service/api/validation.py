"""Checks of a job spec beyond its shape: objective, search space, ops, dataset, model.

Each failure is an `Invalid` naming the field (e.g. `body.search_space.strategies[0].steps[1].op`)
so a user can fix it without reading the server's logs.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from sqlalchemy.orm import Session

from operators import (
    FINETUNE_METHODS,
    METHOD_FIELDS,
    DatasetError,
    check_reference,
    default_search_space,
    method_params,
    validate_strategy,
)
from operators.models.sources import build as build_source
from operators.models.sources import refused_ops, split_record_config
from operators.ops.heads.attention import head_prune_refusal
from search import Candidate, Objective, SearchSettings, SearchSettingsError, SearchSpace
from search.objective import ObjectiveError
from search.space import SearchSpaceError
from service.api.errors import Invalid
from service.api.schemas import JobCreate
from service.api.tenancy import Caller, owned_model, owned_upload
from service.core.datasets import UPLOAD_SCHEME, resolve_reference
from service.core.db import ModelRecord, parse_row_id
from service.core.settings import Settings


def _corner_candidates(space: SearchSpace) -> list[Candidate]:
    """Per strategy: all lows, all highs, and every value of every choice parameter."""
    out = []
    for strategy in space.strategies:
        lows = {p.path: p.choices[0] if p.kind == "choice" else p.low for p in strategy.params}
        highs = {p.path: p.choices[-1] if p.kind == "choice" else p.high for p in strategy.params}
        if any(p.kind == "int" for p in strategy.params):
            lows = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in lows.items()}
        out += [Candidate(strategy.name, lows), Candidate(strategy.name, highs)]
        for p in strategy.params:
            if p.kind == "choice":
                out += [Candidate(strategy.name, {**lows, p.path: c}) for c in p.choices]
    return out


def _step_field(strategy_index: int, message: str) -> str:
    """Map "steps[1].sparsity: ..." from the operators to the job's JSON path."""
    match = re.match(r"(steps\[\d+\](?:\.[A-Za-z_]+)*)", message)
    suffix = match.group(1) if match else "steps"
    return f"body.search_space.strategies[{strategy_index}].{suffix}"


def validate_search_space(raw: dict[str, Any]) -> SearchSpace:
    try:
        space = SearchSpace.from_spec(raw)
    except SearchSpaceError as exc:
        raise Invalid(f"body.{exc.field}", str(exc)) from exc
    index = {s.name: i for i, s in enumerate(space.strategies)}
    for candidate in _corner_candidates(space):
        try:
            validate_strategy(space.materialize(candidate))
        except ValueError as exc:
            raise Invalid(_step_field(index[candidate.strategy], str(exc)), str(exc)) from exc
    return space


def _meta_model(record: ModelRecord) -> torch.nn.Module:
    """The registered model built on the meta device: its layers, nothing allocated."""
    config, _shape, _dtype = split_record_config(record.config)
    with torch.device("meta"):
        return build_source(record.architecture, config)


def default_space_for(record: ModelRecord) -> dict[str, Any]:
    """The default search space of a registered model, from its layers (built on the meta
    device: nothing is allocated)."""
    space = default_search_space(_meta_model(record))
    refused = refused_ops(record.architecture)
    space["strategies"] = [s for s in space["strategies"] if not {t["op"] for t in s["steps"]} & set(refused)]
    return space


def check_ops_for_model(raw: dict[str, Any], record: ModelRecord) -> None:
    """A 422 naming the step whose op the model's source cannot take, or ``head_prune`` on a
    model without attention heads it recognises, and why."""
    refused = refused_ops(record.architecture)
    steps = [step for s in raw.get("strategies", []) for step in s.get("steps", [])]
    if "head_prune" not in refused and any(step.get("op") == "head_prune" for step in steps):
        reason = head_prune_refusal(_meta_model(record))
        if reason is not None:
            refused["head_prune"] = reason
    for i, strategy in enumerate(raw.get("strategies", [])):
        for j, step in enumerate(strategy.get("steps", [])):
            if step.get("op") in refused:
                raise Invalid(f"body.search_space.strategies[{i}].steps[{j}].op",
                              f"{step['op']} cannot run on {record.architecture}: {refused[step['op']]}")  # fmt: skip


def validate_job(body: JobCreate, session: Session, settings: Settings, caller: Caller) -> None:
    """Raise Invalid (422) naming the first field at fault; the model and an uploaded dataset
    must be the caller's (another tenant's reads as not registered)."""
    record = owned_model(session, caller, body.model_id)
    if record is None:
        raise Invalid("body.model_id", f"model {body.model_id} is not registered (POST /v1/models)")
    if body.budget.max_parallel > settings.max_parallel:
        raise Invalid(
            "body.budget.max_parallel",
            f"max_parallel {body.budget.max_parallel} is above this server's limit of "
            f"{settings.max_parallel} (AUTOCOMPRESS_MAX_PARALLEL)",
        )
    scheme, _, upload_id = body.dataset.partition(":")
    upload_row = parse_row_id(upload_id) if scheme == UPLOAD_SCHEME else None
    if upload_row is not None and owned_upload(session, caller, upload_row) is None:
        raise Invalid("body.dataset", f"{body.dataset}: no uploaded dataset {upload_id!r} (upload one: POST /v1/datasets)")
    try:
        check_reference(
            *resolve_reference(body.dataset, settings, session), settings.max_dataset_elements
        )
    except DatasetError as exc:
        raise Invalid("body.dataset", str(exc)) from exc
    try:
        objective = Objective.from_spec(body.objective)
    except ObjectiveError as exc:
        raise Invalid(f"body.{exc.field}", str(exc)) from exc
    if body.search_space is None:  # the service chooses: the default space for this model
        body.search_space = default_space_for(record)
    space = validate_search_space(body.search_space)
    check_ops_for_model(body.search_space, record)
    try:
        SearchSettings.from_spec(body.search).check(space, objective)
    except SearchSettingsError as exc:
        raise Invalid(f"body.{exc.field}", str(exc)) from exc
    if body.finetune.method not in FINETUNE_METHODS:
        raise Invalid(
            "body.finetune.method",
            f"unknown method {body.finetune.method!r}; allowed: {', '.join(FINETUNE_METHODS)}",
        )
    extra = body.finetune.model_dump(include=set(METHOD_FIELDS))
    try:
        method_params(body.finetune.method, extra)
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise Invalid(f"body.finetune.{field}", str(exc)) from exc
