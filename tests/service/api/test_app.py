"""service.api.create_app works with any Dispatcher: jobs are dispatched after their commit."""

from __future__ import annotations

import io
import json
from pathlib import Path

from fastapi.testclient import TestClient
from safetensors.torch import save

from operators import build_model
from service.api import create_app
from service.core.db import Job, session_scope
from service.core.settings import Settings
from tests.conftest import RecordingDispatcher

CONFIG = {"in_features": 64, "hidden": [16], "num_classes": 10}


class CommittedCheck(RecordingDispatcher):
    """Records, and checks that the job row it is told about is already committed."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def advance_job(self, job_id: int) -> None:
        with session_scope(self.url) as session:
            assert session.get(Job, job_id) is not None
        super().advance_job(job_id)


def test_submit_and_cancel_go_through_the_given_dispatcher(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    dispatcher = CommittedCheck(settings.database_url)
    calls: list[str] = []
    app = create_app(
        settings,
        dispatcher=dispatcher,
        on_startup=[lambda: calls.append("start")],
        on_shutdown=[lambda: calls.append("stop")],
    )
    weights = save({k: v.contiguous() for k, v in build_model("mlp", CONFIG).state_dict().items()})
    with TestClient(app) as client:
        assert calls == ["start"]
        model = client.post(
            "/v1/models",
            data={"architecture": "mlp", "config": json.dumps(CONFIG)},
            files={"weights": ("w.safetensors", io.BytesIO(weights))},
        )
        assert model.status_code == 201, model.text
        spec = {
            "model_id": model.json()["id"],
            "dataset": "builtin:digits",
            "objective": {"maximize": "compression_ratio"},
            "search_space": {
                "strategies": [
                    {"name": "p", "steps": [{"op": "prune", "sparsity": {"min": 0.1, "max": 0.9}}]}
                ]
            },
        }
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        assert dispatcher.advanced == [job_id]
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.status_code == 202 and dispatcher.advanced == [job_id, job_id]
        with session_scope(settings.database_url) as session:
            session.get(Job, job_id).state = "cancelled"
        client.post(f"/v1/jobs/{job_id}/cancel")  # a finished job: nothing more to send
        assert dispatcher.advanced == [job_id, job_id]
    assert calls == ["start", "stop"]
