"""The Pareto picture and the report page mark a shorter rung of a multi-fidelity search (a
short fine-tune, `fidelity` < 1) apart: hollow grey markers with their own legend entry, a
greyed row with its fidelity, and never on the front."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from service.api.pareto_plot import SHORT, SHORT_LABEL
from service.core.db import Trial, session_scope
from tests.service.api.test_job_results import add_job, app_and_db, metrics  # noqa: F401

SVG = "{http://www.w3.org/2000/svg}"


def multi_fidelity_job(settings) -> tuple[int, list[int]]:  # noqa: ANN001
    """A job of two short fine-tunes (fidelity 0.25, one of them the best numbers) and the
    full-fidelity continuation of one of them."""
    job_id, ids = add_job(settings, [("succeeded", metrics(0.945, 2000)),
                                     ("succeeded", metrics(0.94, 5000)),
                                     ("succeeded", metrics(0.94, 8000))])  # fmt: skip
    with session_scope(settings.database_url) as session:
        for trial_id in ids[:2]:
            row = session.get(Trial, trial_id)
            row.fidelity, row.rung, row.epochs = 0.25, 0, 0.25
        row = session.get(Trial, ids[2])
        row.fidelity, row.rung, row.parent_trial_id, row.epochs = 1.0, 1, ids[1], 0.75
    return job_id, ids


def markers(group: ET.Element) -> list[ET.Element]:
    """The drawn markers of a scatter's SVG group (a path each, or a `use` of one in defs)."""
    defined = {id(el) for defs in group.iter(f"{SVG}defs") for el in defs.iter()}
    return [el for el in group.iter() if el.get("style") and id(el) not in defined]


def test_pareto_svg_draws_short_fine_tunes_hollow_and_apart(app_and_db) -> None:  # noqa: ANN001, F811
    client, settings = app_and_db
    job_id, _ = multi_fidelity_job(settings)
    root = ET.fromstring(client.get(f"/v1/jobs/{job_id}/pareto.svg").content)
    groups = {g.get("id"): g for g in root.iter(f"{SVG}g")}
    short = markers(groups["short-fine-tune"])
    assert len(short) == 2  # both short trials, and only they
    assert all(
        "fill: none" in m.get("style") and f"stroke: {SHORT}" in m.get("style") for m in short
    )
    assert len(markers(groups["front"])) == 1 and "feasible" not in groups  # the full one only
    texts = " ".join("".join(el.itertext()) for el in root.iter(f"{SVG}text"))
    assert SHORT_LABEL in texts and "best: trial 2" in texts  # 2.5x, not the short 10x


def test_pareto_svg_without_short_fine_tunes_has_no_such_legend(app_and_db) -> None:  # noqa: ANN001, F811
    client, settings = app_and_db
    job_id, _ = add_job(settings, [("succeeded", metrics(0.94, 5000))])
    svg = client.get(f"/v1/jobs/{job_id}/pareto.svg").text
    assert SHORT_LABEL not in svg and 'id="short-fine-tune"' not in svg


def figure_data(html: str) -> list[dict]:
    """The traces the report page gives Plotly.newPlot."""
    start = html.index('Plotly.newPlot("front", ') + len('Plotly.newPlot("front", ')
    return json.JSONDecoder().raw_decode(html[start:])[0]


def test_report_page_marks_short_fine_tunes_in_the_plot_and_the_table(app_and_db) -> None:  # noqa: ANN001, F811
    client, settings = app_and_db
    job_id, (short, continued, full) = multi_fidelity_job(settings)
    html = client.get(f"/v1/jobs/{job_id}/report").text
    traces = {trace["name"]: trace for trace in figure_data(html)}
    assert traces[SHORT_LABEL]["customdata"] == [short, continued]
    assert traces[SHORT_LABEL]["marker"]["symbol"] == "circle-open"
    assert traces["Pareto front"]["customdata"] == [full]
    assert traces["feasible"]["customdata"] == [] and traces["infeasible"]["customdata"] == []
    assert "fidelity 0.25 (rung 0): not on the front" in traces[SHORT_LABEL]["text"][0]
    rows = re.findall(r'<tr class="([^"]*)">\s*<td>\d+</td><td>(\d+)</td>', html)
    classes = {int(trial_id): set(cls.split()) for cls, trial_id in rows}
    assert "short" in classes[short] and "short" in classes[continued]
    assert "short" not in classes[full] and "best" in classes[full]
    assert f"<td>1 (rung 1), from id {continued}</td>" in html and "<td>0.25</td>" in html
