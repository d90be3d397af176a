"""A dependency-free SVG scatter plot of a job's trials with its Pareto front highlighted."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from search import Objective
from search.metric_table import finite_values
from service.core.db import Trial

W, H, PAD = 640, 420, 60


def _scale(values: list[float], lo_px: float, hi_px: float):  # noqa: ANN202
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def render_front(
    trials: Sequence[Trial],
    front: Sequence[Trial],
    metrics: Sequence[tuple[str, str]],
    objective: Objective,
) -> str:
    """x = second metric, y = first metric; grey = infeasible, blue = feasible, red = front."""
    (ym, _), (xm, _) = metrics[0], metrics[1]
    # the points search.pareto can rank: succeeded, with finite values of both metrics
    done = [
        t
        for t in trials
        if t.state == "succeeded" and finite_values(t.metrics, (xm, ym)) is not None
    ]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"'
        ' font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 20}" y2="{H - PAD}" stroke="black"/>',
        f'<line x1="{PAD}" y1="20" x2="{PAD}" y2="{H - PAD}" stroke="black"/>',
        f'<text x="{W / 2}" y="{H - 20}" text-anchor="middle">{escape(xm)}</text>',
        f'<text x="15" y="{H / 2}" transform="rotate(-90 15 {H / 2})" text-anchor="middle">'
        f"{escape(ym)}</text>",
    ]
    if done:
        xs = [float(t.metrics[xm]) for t in done]
        ys = [float(t.metrics[ym]) for t in done]
        sx, sy = _scale(xs, PAD + 10, W - 30), _scale(ys, H - PAD - 10, 30)
        front_ids = {t.id for t in front}
        for t, x, y in zip(done, xs, ys, strict=True):
            color = (
                "crimson"
                if t.id in front_ids
                else ("steelblue" if objective.is_feasible(t.metrics) else "#bbb")
            )
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}">'
                f"<title>trial {t.number}: {escape(t.strategy)} {xm}={x:.4g} {ym}={y:.4g}</title>"
                "</circle>"
            )
        pts = sorted((sx(float(t.metrics[xm])), sy(float(t.metrics[ym]))) for t in front)
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="crimson"/>')
        for v, label_y in ((min(xs), H - PAD + 15), (max(xs), H - PAD + 15)):
            parts.append(f'<text x="{sx(v):.1f}" y="{label_y}" text-anchor="middle">{v:.4g}</text>')
        for v in (min(ys), max(ys)):
            parts.append(f'<text x="{PAD - 5}" y="{sy(v):.1f}" text-anchor="end">{v:.4g}</text>')
    else:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no finished trials</text>')
    parts.append("</svg>")
    return "\n".join(parts)
