"""A job's results for people: the Pareto picture (SVG, PNG) and an HTML report page.

- `GET /v1/jobs/{id}/pareto.svg` and `/pareto.png`: drawn by `service.api.pareto_plot`.
- `GET /v1/jobs/{id}/report`: an interactive front (plotly; hover shows the trial's id,
  strategy, parameters and metrics), the trials table with each proposal's reason and each
  trial's fidelity (a shorter rung of a multi-fidelity search is a hollow grey marker and a
  greyed row, never on the front), and the best trial's checkpoint link. plotly.js comes from the installed `plotly` package, served by
  `GET /static/plotly.min.js`: the page loads nothing from outside the server.

The front and the best trial are those of `service.api.presenters` (one source, `search.pareto`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment

from search import METRIC_TABLE, Objective
from service.api.deps import CallerDep, JobId, SessionDep
from service.api.pareto_plot import (
    MEDIA_TYPES,
    SHORT,
    SHORT_LABEL,
    ImageFormat,
    axis_label,
    constraint_bounds,
    describe_objective,
    render_front,
)
from service.api.presenters import (
    best_trial,
    finetune_epochs,
    front_metrics,
    job_public,
    objective_of,
    pareto_trials,
    trial_public,
)
from service.api.schemas import TrialPublic
from service.api.tenancy import owned_job
from service.core import repository

router = APIRouter(prefix="/v1/jobs", tags=["results"])
static_router = APIRouter(tags=["results"])

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
PLOTLY_URL = "/static/plotly.min.js"


def _picture(job_id: int, session: SessionDep, caller: CallerDep, fmt: ImageFormat) -> Response:
    job = owned_job(session, caller, job_id)
    trials = repository.job_trials(session, job_id)
    objective = objective_of(job)
    front, best = pareto_trials(trials, objective), best_trial(trials, objective)
    image = render_front(job, trials, front, best, front_metrics(objective), objective, fmt)
    return Response(image, media_type=MEDIA_TYPES[fmt])


@router.get(
    "/{job_id}/pareto.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}, "description": "The front as SVG."}},
)
def get_pareto_svg(job_id: JobId, session: SessionDep, caller: CallerDep) -> Response:
    """The Pareto picture as SVG: trials (feasible, infeasible, failed), the baseline, the
    constraint bound, the front as a step line and the best trial with its compression ratio;
    size in bytes on a log axis, accuracy in %."""
    return _picture(job_id, session, caller, "svg")


@router.get(
    "/{job_id}/pareto.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The front as PNG."}},
)
def get_pareto_png(job_id: JobId, session: SessionDep, caller: CallerDep) -> Response:
    """The same Pareto picture as PNG (900x600)."""
    return _picture(job_id, session, caller, "png")


@static_router.get(PLOTLY_URL, include_in_schema=False)
def plotly_js() -> FileResponse:
    """plotly.js as shipped inside the installed plotly package (no CDN)."""
    return FileResponse(
        PLOTLY_JS,
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )


def _hover(trial: TrialPublic) -> str:
    lines = [f"trial {trial.number} (id {trial.id})", f"strategy: {trial.strategy}"]
    if trial.fidelity < 1.0:
        lines.append(f"fidelity {_fmt(trial.fidelity)} (rung {trial.rung}): not on the front")
    lines += [f"{k} = {_fmt(v)}" for k, v in sorted(trial.params.items())]
    for name in ("accuracy", "accuracy_drop", "size_bytes", "compression_ratio", "latency_ms"):
        if trial.metrics and name in trial.metrics:
            lines.append(f"{name}: {_fmt(trial.metrics[name])}")
    return "<br>".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _figure(
    trials: list[TrialPublic],
    front_ids: set[int],
    xm: str,
    ym: str,
    baseline: dict | None,
    objective: Objective,
) -> dict[str, Any]:
    """The plotly figure (as JSON-able dict): one trace per kind of trial, plus the baseline."""
    fig = go.Figure()
    final = [t for t in trials if t.fidelity >= 1.0]
    kinds = {
        "Pareto front": [t for t in final if t.id in front_ids],
        "feasible": [t for t in final if t.feasible and t.id not in front_ids],
        "infeasible": [t for t in final if t.feasible is False],
        SHORT_LABEL: [t for t in trials if t.fidelity < 1.0 and t.state == "succeeded"],
    }
    styles = {
        "Pareto front": {"color": "#ff7f0e", "symbol": "diamond", "size": 12},
        "feasible": {"color": "#1f77b4", "symbol": "circle", "size": 9},
        "infeasible": {"color": "#9e9e9e", "symbol": "triangle-up", "size": 9},
        SHORT_LABEL: {"color": SHORT, "symbol": "circle-open", "size": 9},
    }
    for name, group in kinds.items():
        group = [t for t in group if t.metrics and xm in t.metrics and ym in t.metrics]
        if name == "Pareto front":
            group.sort(key=lambda t: t.metrics[xm])
        fig.add_trace(
            go.Scatter(
                x=[t.metrics[xm] for t in group],
                y=[t.metrics[ym] for t in group],
                mode="lines+markers" if name == "Pareto front" else "markers",
                line={"shape": "hv"},
                name=name,
                marker=styles[name],
                text=[_hover(t) for t in group],
                customdata=[t.id for t in group],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if baseline and xm in baseline and ym in baseline:
        fig.add_trace(
            go.Scatter(
                x=[baseline[xm]],
                y=[baseline[ym]],
                mode="markers+text",
                name="baseline",
                text=["baseline"],
                textposition="top left",
                marker={"color": "#2ca02c", "symbol": "star", "size": 16},
                hovertemplate=f"baseline<br>{xm}: %{{x}}<br>{ym}: %{{y}}<extra></extra>",
            )
        )
    for axis, value, text in constraint_bounds(objective, baseline, xm, ym):
        line = fig.add_hline if axis == "y" else fig.add_vline
        line(value, line_dash="dash", line_color="#7f3fbf", annotation_text=f"bound: {text}")
    fig.update_layout(
        xaxis={"title": {"text": axis_label(xm)}, "type": "log" if _positive(xm) else "linear"},
        yaxis={
            "title": {"text": axis_label(ym)},
            "type": "log" if _positive(ym) else "linear",
            "tickformat": ".1%" if _fraction(ym) else "",
        },
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
        height=420,
        legend={"orientation": "h"},
    )
    return json.loads(fig.to_json())


def _positive(metric: str) -> bool:
    return metric in METRIC_TABLE and METRIC_TABLE[metric].positive


def _fraction(metric: str) -> bool:
    return metric in METRIC_TABLE and METRIC_TABLE[metric].unit == "fraction"


REPORT = Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Job {{ job.id }} report - autocompress</title>
<script src="{{ plotly_url }}"></script>
<style>
 body { font-family: sans-serif; margin: 1.2em 2em; color: #222; }
 h1 { font-size: 1.4em; margin-bottom: .2em; } .sub { color: #555; margin-top: 0; }
 table { border-collapse: collapse; font-size: .85em; width: 100%; }
 th, td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
 th { background: #f3f3f3; } tr.best { background: #fff3d6; } .infeasible { color: #888; }
 .failed { color: #c62828; } tr.short { color: #888; font-style: italic; } .box { display: flex; gap: 2em; flex-wrap: wrap; }
 .box > div { background: #f7f7f7; padding: .5em 1em; border-radius: 6px; }
 code { font-size: .95em; }
</style></head>
<body>
<h1>Job {{ job.id }}: {{ goal }}</h1>
<p class="sub">state <b>{{ job.state }}</b> · {{ job.progress.trials_done }} of
{{ job.progress.trials_total }} trials{% if job.stop_reason %} · stopped: {{ job.stop_reason }}{% endif %}</p>
<div class="box">
 <div>baseline: accuracy {{ pct(job.baseline.accuracy) if job.baseline else "-" }},
  {{ job.baseline.size_bytes if job.baseline else "-" }} bytes</div>
 {% if job.best %}<div id="best">best: trial {{ job.best.number }} (id {{ job.best.id }}),
  {{ "%.1f"|format(job.best.metrics.compression_ratio) }}&times; smaller, accuracy
  {{ pct(job.best.metrics.accuracy) }}{% if job.best.checkpoint_url %} ·
  <a id="best-checkpoint" href="{{ job.best.checkpoint_url }}">download checkpoint</a>{% endif %}</div>
 {% elif job.closest %}<div id="closest">no feasible trial;
  closest: trial {{ job.closest.number }} (id {{ job.closest.id }}): {{ job.stop_reason }}</div>{% endif %}
 <div><a href="{{ job.links.pareto_svg }}">pareto.svg</a> · <a href="{{ job.links.pareto_png }}">pareto.png</a>
  · <a href="/v1/jobs/{{ job.id }}">job JSON</a></div>
</div>
<h2>Front: {{ ym }} against {{ xm }}</h2>
<div id="front" style="width:100%;height:420px"></div>
<script>Plotly.newPlot("front", {{ figure.data|tojson }}, {{ figure.layout|tojson }}, {responsive: true});</script>
<h2>Trials</h2>
<table id="trials"><thead><tr><th>#</th><th>id</th><th>state</th><th>strategy</th><th>parameters</th>
<th>fidelity</th><th>accuracy</th><th>size (bytes)</th><th>ratio</th><th>reason</th><th>checkpoint</th></tr></thead><tbody>
{% for t in trials %}<tr class="{{ 'best' if job.best and t.id == job.best.id else '' }} {{ 'infeasible' if t.feasible is false else '' }} {{ 'failed' if t.state == 'failed' else '' }} {{ 'short' if t.fidelity < 1 else '' }}">
<td>{{ t.number }}</td><td>{{ t.id }}</td><td>{{ t.state }}{% if t.feasible is false %} (infeasible){% endif %}</td>
<td>{{ t.strategy }}</td>
<td>{% for k, v in t.params|dictsort %}<code>{{ k }}={{ fmt(v) }}</code> {% endfor %}</td>
<td>{{ fmt(t.fidelity) }}{% if t.rung %} (rung {{ t.rung }}){% endif %}{% if t.parent %}, from id {{ t.parent }}{% endif %}</td>
<td>{{ pct(t.metrics.accuracy) if t.metrics and t.metrics.accuracy is defined else "" }}</td>
<td>{{ t.metrics.size_bytes if t.metrics else "" }}</td>
<td>{{ "%.2f"|format(t.metrics.compression_ratio) if t.metrics and t.metrics.compression_ratio is defined else "" }}</td>
<td>{{ reason(t) }}{% if t.error %}<br><span class="failed">{{ t.error }}</span>{% endif %}</td>
<td>{% if t.checkpoint_url %}<a href="{{ t.checkpoint_url }}">download</a>{% endif %}</td></tr>
{% endfor %}</tbody></table>
<h2>The same front as a picture</h2>
<img id="pareto-picture" src="{{ job.links.pareto_svg }}" alt="Pareto picture of job {{ job.id }}" width="900" height="600">
</body></html>
"""
)


def _reason(trial: TrialPublic) -> str:
    """The proposal's reason in one line: method, then acquisition value and predictions."""
    reason = trial.reason or {}
    parts = [str(reason.get("method", "-"))]
    for key, value in reason.items():
        if key != "method" and isinstance(value, (int, float, str)):
            parts.append(f"{key}={_fmt(value)}")
        elif key != "method" and isinstance(value, dict):
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if not isinstance(v, dict))
            parts.append(f"{key}: {inner}" if inner else key)
    return "; ".join(parts)


@router.get("/{job_id}/report", response_class=HTMLResponse)
def get_report(job_id: JobId, session: SessionDep, caller: CallerDep) -> HTMLResponse:
    """An HTML page of the job: an interactive front (hover: trial id, strategy, parameters,
    metrics), every trial with why it was proposed, the best checkpoint's download link."""
    job = owned_job(session, caller, job_id)
    rows = repository.job_trials(session, job_id)
    objective = objective_of(job)
    view = job_public(job, rows)
    epochs = finetune_epochs(job)
    trials = [trial_public(t, objective, epochs) for t in rows]
    (ym, _), (xm, _) = front_metrics(objective)[:2]
    front_ids = {t.id for t in pareto_trials(rows, objective)}
    html = REPORT.render(
        job=view,
        goal=describe_objective(objective),
        trials=trials,
        figure=_figure(trials, front_ids, xm, ym, job.baseline, objective),
        xm=xm,
        ym=ym,
        plotly_url=PLOTLY_URL,
        pct=lambda v: f"{100 * float(v):.2f}%",
        fmt=_fmt,
        reason=_reason,
    )
    return HTMLResponse(html)
