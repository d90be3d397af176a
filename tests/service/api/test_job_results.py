"""A job's results for people: the Pareto picture (SVG, PNG), the report page, `links`, and
`closest` with the stop reason when no trial is feasible. Rows are written straight into a
migrated SQLite database; the app is the real one, over its ASGI interface."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.core.db import Artifact, Job, ModelRecord, Trial, session_scope, upgrade
from service.core.settings import Settings
from tests.conftest import RecordingDispatcher

BASELINE = {"accuracy": 0.95, "size_bytes": 20000, "compression_ratio": 1.0}
OBJECTIVE = {"maximize": "compression_ratio", "constraints": [{"metric": "accuracy_drop", "max": 0.02}]}
SPEC = {"objective": OBJECTIVE, "budget": {"max_trials": 5, "max_parallel": 1}, "dataset": "builtin:digits"}


def metrics(accuracy: float, size: int) -> dict:
    return {
        "accuracy": accuracy,
        "accuracy_drop": round(BASELINE["accuracy"] - accuracy, 6),
        "size_bytes": size,
        "compression_ratio": BASELINE["size_bytes"] / size,
    }


@pytest.fixture(scope="module")
def app_and_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """One migrated database and app for the module; each test adds its own job."""
    settings = Settings(home=tmp_path_factory.mktemp("results"))
    settings.ensure_dirs()
    upgrade(settings.database_url)
    with TestClient(create_app(settings, dispatcher=RecordingDispatcher())) as client:
        yield client, settings


def add_job(settings: Settings, results: list[tuple[str, dict | None]]) -> tuple[int, list[int]]:
    """A finished job with one trial per (state, metrics); returns its id and the trial ids."""
    with session_scope(settings.database_url) as session:
        artifact = Artifact(kind="weights", path="w", size_bytes=1, sha256="0" * 64)
        session.add(artifact)
        session.flush()
        model = ModelRecord(name="m", architecture="mlp", config={}, params=1, weights_artifact_id=artifact.id)
        session.add(model)
        session.flush()
        job = Job(model_id=model.id, spec=SPEC, state="succeeded", baseline=BASELINE,
                  stop_reason="trial budget spent (5 trials)")  # fmt: skip
        session.add(job)
        session.flush()
        trials = [
            Trial(job_id=job.id, number=i, state=state, strategy="prune", params={"sparsity": 0.1 * i},
                  steps=[], metrics=m, reason={"method": "sobol"}, error=None if m else "boom")  # fmt: skip
            for i, (state, m) in enumerate(results)
        ]
        session.add_all(trials)
        session.flush()
        return job.id, [t.id for t in trials]


MIXED = [
    ("succeeded", metrics(0.94, 8000)),  # feasible
    ("succeeded", metrics(0.935, 5000)),  # feasible, the best (4x)
    ("succeeded", metrics(0.90, 3000)),  # infeasible (drop 0.05)
    ("failed", None),
    ("succeeded", metrics(0.93, 9000)),  # feasible, dominated
]


def test_pareto_svg_is_a_titled_picture_with_a_log_size_axis(app_and_db) -> None:  # noqa: ANN001
    client, settings = app_and_db
    job_id, _ = add_job(settings, MIXED)
    reply = client.get(f"/v1/jobs/{job_id}/pareto.svg")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(reply.content)
    assert root.tag.endswith("svg")
    texts = " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))
    assert f"Job {job_id}" in texts and "accuracy_drop ≤ 0.02" in texts
    assert "size_bytes (bytes, log scale)" in texts and "accuracy (%)" in texts
    for label in ("baseline", "feasible", "infeasible", "failed: 1", "Pareto front", "bound"):
        assert label in texts, label
    assert "best: trial 1" in texts and "4.0× smaller" in texts


def test_pareto_png_is_a_png(app_and_db) -> None:  # noqa: ANN001
    client, settings = app_and_db
    job_id, _ = add_job(settings, MIXED)
    reply = client.get(f"/v1/jobs/{job_id}/pareto.png")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert reply.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(reply.content[16:20], "big"), int.from_bytes(reply.content[20:24], "big")
    assert (width, height) == (900, 600)


def test_pictures_of_an_unknown_job_are_404_json(app_and_db) -> None:  # noqa: ANN001
    client, _ = app_and_db
    for suffix in ("pareto.svg", "pareto.png", "report"):
        reply = client.get(f"/v1/jobs/999/{suffix}")
        assert reply.status_code == 404 and reply.json()["detail"] == "job 999 not found"


def test_report_page_uses_the_local_plotly_and_lists_every_trial(app_and_db) -> None:  # noqa: ANN001
    client, settings = app_and_db
    job_id, trial_ids = add_job(settings, MIXED)
    page = client.get(f"/v1/jobs/{job_id}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/static/plotly.min.js"]
    assert "http://" not in html and "https://" not in html  # nothing from outside
    js = client.get(scripts[0])
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower()
    for trial_id, (state, _) in zip(trial_ids, MIXED, strict=True):
        assert f"<td>{trial_id}</td>" in html  # the table
        assert (f"(id {trial_id})" in html) == (state == "succeeded")  # the hover of the plot
    assert f'href="/v1/trials/{trial_ids[1]}/checkpoint"' not in html  # no checkpoint row here
    assert "sobol" in html and "boom" in html  # the reasons and the failure
    assert "strategy: prune" in html and "sparsity = 0.1" in html  # the hover text


def test_job_links_name_the_pictures_and_the_report(app_and_db) -> None:  # noqa: ANN001
    client, settings = app_and_db
    job_id, trial_ids = add_job(settings, MIXED)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["links"] == {
        "trials": f"/v1/jobs/{job_id}/trials",
        "pareto": f"/v1/jobs/{job_id}/pareto",
        "pareto_svg": f"/v1/jobs/{job_id}/pareto.svg",
        "pareto_png": f"/v1/jobs/{job_id}/pareto.png",
        "report": f"/v1/jobs/{job_id}/report",
    }
    assert job["best"]["id"] == trial_ids[1] and job["closest"] is None
    assert job["stop_reason"] == "trial budget spent (5 trials)"
    schema = client.get("/openapi.json").json()
    for path, media in (("pareto.svg", "image/svg+xml"), ("pareto.png", "image/png")):
        content = schema["paths"][f"/v1/jobs/{{job_id}}/{path}"]["get"]["responses"]["200"]["content"]
        assert media in content
    assert "links" in schema["components"]["schemas"]["JobPublic"]["properties"]


def test_no_feasible_trial_names_the_closest_and_says_so(app_and_db) -> None:  # noqa: ANN001
    client, settings = app_and_db
    job_id, trial_ids = add_job(
        settings,
        [
            ("succeeded", metrics(0.90, 3000)),  # drop 0.05
            ("succeeded", metrics(0.92, 4000)),  # drop 0.03: the closest
            ("failed", None),
            ("succeeded", metrics(0.80, 2000)),  # drop 0.15
        ],
    )
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["best"] is None
    assert job["closest"]["id"] == trial_ids[1]
    assert job["stop_reason"] == (
        "trial budget spent (5 trials); no trial met the constraints; "
        "closest: trial 1 (accuracy_drop 0.03 > max 0.02)"
    )
    page = client.get(f"/v1/jobs/{job_id}/report").text
    assert f"closest: trial 1 (id {trial_ids[1]})" in page
    assert client.get(f"/v1/jobs/{job_id}/pareto.svg").status_code == 200
