"""The Pareto picture of a job, drawn with matplotlib (Agg, headless) as SVG or PNG.

`render_front` is given what the presenters computed (the front and the best trial come from
`service.api.presenters`, which asks `search.pareto`): it only draws. x is the front's second
metric (size in bytes, log axis, for a single objective), y the first (accuracy, in %). The
baseline is a labelled star; feasible, infeasible and failed trials differ in marker, colour
and legend, and a shorter rung of a multi-fidelity search (`fidelity` < 1, never on the front)
is a hollow grey circle, "short fine-tune (not on the front)"; each constraint that maps onto
an axis is a dashed line (an `accuracy_drop` bound becomes baseline accuracy minus the bound);
the front is a step line; the best trial is labelled with its compression ratio.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG (searchable, small)

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, PercentFormatter  # noqa: E402

from search import METRIC_TABLE, Objective  # noqa: E402
from search.metric_table import finite_values  # noqa: E402
from service.api.presenters import trial_fidelity  # noqa: E402
from service.core.db import Job, Trial  # noqa: E402

ImageFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}

FEASIBLE, INFEASIBLE, FAILED, FRONT, BASELINE, BOUND = (
    "#1f77b4",
    "#9e9e9e",
    "#d62728",
    "#ff7f0e",
    "#2ca02c",
    "#7f3fbf",
)
SHORT = INFEASIBLE  # a shorter rung: hollow markers of this grey
SHORT_LABEL = "short fine-tune (not on the front)"


def describe_objective(objective: Objective) -> str:
    """One line: what is optimised, subject to what."""
    if objective.kind == "pareto":
        goal = "Pareto front of " + ", ".join(f"{g} {m}" for m, g in objective.metrics)
    else:
        metric, g = objective.metrics[0]
        goal = f"{'maximize' if g == 'max' else 'minimize'} {metric}"
    bounds = []
    for c in objective.constraints:
        if c.min is not None:
            bounds.append(f"{c.metric} ≥ {c.min:g}")
        if c.max is not None:
            bounds.append(f"{c.metric} ≤ {c.max:g}")
    return goal + (f" subject to {', '.join(bounds)}" if bounds else "")


def axis_label(metric: str) -> str:
    """The metric with its unit, e.g. ``size_bytes (bytes, log scale)``."""
    info = METRIC_TABLE.get(metric)
    if info is None:
        return metric
    unit = "%" if info.unit == "fraction" else info.unit
    scale = ", log scale" if info.positive else ""
    return f"{metric} ({unit}{scale})"


def constraint_bounds(
    objective: Objective, baseline: Mapping[str, Any] | None, xm: str, ym: str
) -> list[tuple[str, float, str]]:
    """(axis, value, label) of every constraint bound that can be drawn on these axes."""
    out: list[tuple[str, float, str]] = []
    base = baseline or {}
    for c in objective.constraints:
        for bound, sign in ((c.min, "≥"), (c.max, "≤")):
            if bound is None:
                continue
            text = f"{c.metric} {sign} {bound:g}"
            if c.metric == ym:
                out.append(("y", float(bound), text))
            elif c.metric == xm:
                out.append(("x", float(bound), text))
            elif c.metric == "accuracy_drop" and ym == "accuracy" and "accuracy" in base:
                out.append(("y", float(base["accuracy"]) - float(bound), f"baseline − {bound:g}"))
            elif (
                c.metric == "compression_ratio"
                and xm == "size_bytes"
                and bound > 0
                and ("size_bytes" in base)
            ):
                out.append(("x", float(base["size_bytes"]) / float(bound), text))
    return out


def render_front(
    job: Job,
    trials: Sequence[Trial],
    front: Sequence[Trial],
    best: Trial | None,
    metrics: Sequence[tuple[str, str]],
    objective: Objective,
    fmt: ImageFormat = "svg",
) -> bytes:
    """The job's trials, baseline, constraint bounds and front as an SVG or PNG image."""
    (ym, ygoal), (xm, _) = metrics[0], metrics[1]
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    title = f"Job {job.id}: {describe_objective(objective)}"
    fig.suptitle(title, fontsize=12, wrap=True)
    ax.set_xlabel(axis_label(xm))
    ax.set_ylabel(axis_label(ym))
    for axis, name in (("x", xm), ("y", ym)):
        info = METRIC_TABLE.get(name)
        if info is not None and info.positive:
            getattr(ax, f"set_{axis}scale")("log")
            for which in ("major", "minor"):  # 20 kB, 1.5 M (counts); 0.5 ms stays 0.5
                formatter = (
                    EngFormatter(unit="B" if info.unit == "bytes" else "")
                    if info.unit in ("bytes", "count", "MACs per sample")
                    else FuncFormatter(lambda v, _: f"{v:g}")
                )
                getattr(getattr(ax, f"{axis}axis"), f"set_{which}_formatter")(formatter)
        if info is not None and info.unit == "fraction":
            getattr(ax, f"{axis}axis").set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
    ax.grid(True, which="major", alpha=0.3)

    placed = [(t, finite_values(t.metrics, (xm, ym))) for t in trials]
    front_ids = {t.id for t in front}
    groups: dict[str, list[tuple[float, float]]] = {"feasible": [], "infeasible": [], "short": []}
    for t, values in placed:
        if t.state != "succeeded" or values is None or t.id in front_ids:
            continue
        key = "feasible" if objective.is_feasible(t.metrics) else "infeasible"
        groups["short" if trial_fidelity(t) < 1.0 else key].append((values[0], values[1]))
    failed = [t for t in trials if t.state == "failed"]
    handles = []
    styles = {  # group -> scatter style (gid: the SVG group id the tests and CSS find)
        "feasible": {"s": 40, "c": FEASIBLE, "marker": "o", "label": "feasible"},
        "infeasible": {"s": 45, "c": INFEASIBLE, "marker": "^",
                       "label": "infeasible (violates a bound)"},
        "short": {"s": 40, "marker": "o", "facecolors": "none", "edgecolors": SHORT,
                  "linewidths": 1.2, "label": SHORT_LABEL},
    }  # fmt: skip
    gids = {"feasible": "feasible", "infeasible": "infeasible", "short": "short-fine-tune"}
    for group, style in styles.items():
        if groups[group]:
            xs, ys = zip(*groups[group], strict=True)
            handles.append(ax.scatter(xs, ys, gid=gids[group], **style))
    front_pts = sorted((v[0], v[1]) for t, v in placed if t.id in front_ids and v is not None)
    if front_pts:
        xs, ys = zip(*front_pts, strict=True)
        ax.step(xs, ys, where="post" if ygoal == "max" else "pre", color=FRONT, lw=1.5, zorder=2)
        handles.append(
            ax.scatter(
                xs,
                ys,
                s=70,
                c=FRONT,
                marker="D",
                edgecolors="black",
                zorder=3,
                label="Pareto front (feasible, non-dominated)",
                gid="front",
            )  # fmt: skip
        )
    base = finite_values(job.baseline, (xm, ym))
    if base is not None:
        handles.append(
            ax.scatter(
                [base[0]],
                [base[1]],
                s=220,
                c=BASELINE,
                marker="*",
                edgecolors="black",
                zorder=4,
                label="baseline (uncompressed)",
            )  # fmt: skip
        )
        ax.annotate("baseline", base, xytext=(-10, 10), textcoords="offset points", ha="right")
    for axis, value, text in constraint_bounds(objective, job.baseline, xm, ym):
        line = ax.axhline if axis == "y" else ax.axvline
        line(value, color=BOUND, ls="--", lw=1.2, zorder=1)
        handles.append(Line2D([], [], color=BOUND, ls="--", label=f"bound: {text}"))
    if failed:
        handles.append(
            Line2D(
                [],
                [],
                color=FAILED,
                marker="x",
                ls="",
                markersize=8,
                label=f"failed: {len(failed)} (no metrics, not placed)",
            )  # fmt: skip
        )
    best_values = finite_values(best.metrics, (xm, ym)) if best is not None else None
    if best is not None and best_values is not None:
        ratio = (best.metrics or {}).get("compression_ratio")
        text = f"best: trial {best.number}"
        if isinstance(ratio, (int, float)):
            text += f"\n{ratio:.1f}× smaller"
        ax.annotate(
            text,
            best_values,
            xytext=(25, -35),
            textcoords="offset points",
            arrowprops={"arrowstyle": "->", "color": "black"},
            bbox={"boxstyle": "round", "fc": "#fff8e1", "ec": FRONT},
        )
    if not any(v is not None for _, v in placed) and base is None:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", transform=ax.transAxes)
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, metadata={"Title": title})
    return buf.getvalue()
