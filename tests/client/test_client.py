"""client.Client and the CLI verbs on it (`autocompress submit/jobs/status/trials/pareto/
download/export/cancel`) against a real embedded server over HTTP (uvicorn subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from client import ApiError, Client
from operators import load_checkpoint
from tests.conftest import DIGITS_JOB_SPEC, ROOT, serve_digits_model


@pytest.fixture(scope="module")
def server(module_stack, digits_model):  # noqa: ANN001, ANN201
    """(stack, model id, a job spec for it) on a fresh embedded server."""
    stack = module_stack()
    model_id = serve_digits_model(stack, digits_model)
    spec = {**DIGITS_JOB_SPEC, "model_id": model_id, "budget": {"max_trials": 2, "max_parallel": 1}}
    return stack, model_id, spec


def cli(stack, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    """`autocompress ARGS` as a user runs it, the server taken from AUTOCOMPRESS_URL."""
    env = {**stack.env, "AUTOCOMPRESS_URL": stack.url}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_client_submits_follows_and_downloads(server, tmp_path) -> None:
    stack, model_id, spec = server
    with Client(stack.url) as api:
        assert api.health()["status"] == "ok"
        assert [m["id"] for m in api.models()] == [model_id] and api.model(model_id)["name"] == "digits"
        job_id = api.submit(spec)["id"]
        kinds = [event.kind for event in api.events(job_id)]
        assert kinds[-1] == "job.finished" and kinds.count("trial.finished") == 2
        job = api.job(job_id)
        assert job["state"] == "succeeded" and job["progress"]["eta_seconds"] == 0.0
        assert [t["number"] for t in api.trials(job_id)] == [0, 1]
        assert api.trial(job["best"]["id"])["feasible"] is True
        assert api.pareto(job_id)["trials"]
        path = api.download(job["best"]["id"], tmp_path)
        assert path.name == f"trial-{job['best']['id']}.acpk"
        assert path.stat().st_size == job["best"]["metrics"]["size_bytes"]
        load_checkpoint(path)  # loadable without pickle
        assert job_id in [j["id"] for j in api.jobs(state="succeeded")]
        with pytest.raises(ApiError) as missing:
            api.job(999)
        assert missing.value.status == 404 and missing.value.detail == "job 999 not found"
        with pytest.raises(ApiError) as invalid:
            api.submit({**spec, "budget": {"max_trials": 0}})
        assert invalid.value.status == 422
        assert invalid.value.errors[0]["field"] == "body.budget.max_trials"


def test_cli_submit_wait_then_inspect_a_job(server, tmp_path) -> None:
    stack, _, spec = server
    (tmp_path / "job.json").write_text(json.dumps({**spec, "budget": {"max_trials": 1}}))
    done = cli(stack, "submit", str(tmp_path / "job.json"), "--wait")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "succeeded" and summary["best"]["feasible"]
    assert "1/1" in done.stderr and "best: trial" in done.stderr  # the progress bar
    job_id, best = summary["id"], summary["best"]["id"]
    listed = cli(stack, "jobs", "--json", "--state", "succeeded")
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]
    table = cli(stack, "jobs")
    assert table.returncode == 0 and str(job_id) in table.stdout and "succeeded" in table.stdout
    status = cli(stack, "status", str(job_id))
    assert status.returncode == 0 and "1/1" in status.stdout
    trials = json.loads(cli(stack, "trials", str(job_id), "--json").stdout)
    assert [t["state"] for t in trials] == ["succeeded"]
    assert "compression_ratio" in cli(stack, "trials", str(job_id)).stdout
    pareto = cli(stack, "pareto", str(job_id))
    assert pareto.returncode == 0 and "Pareto front" in pareto.stdout
    opened, browser = tmp_path / "opened.txt", tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')  # writes down the address it got
    browser.chmod(0o755)
    stack.env["BROWSER"] = str(browser)
    assert cli(stack, "pareto", str(job_id), "--open").returncode == 0
    del stack.env["BROWSER"]
    assert opened.read_text().strip() == f"{stack.url}/v1/jobs/{job_id}/report"
    out = tmp_path / "best.safetensors"
    downloaded = cli(stack, "download", str(best), "--output", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert json.loads(downloaded.stdout)["size_bytes"] == out.stat().st_size > 0


def test_cli_shows_the_servers_error_not_a_traceback(server, tmp_path) -> None:
    stack, _, spec = server
    missing = cli(stack, "status", "999")
    assert missing.returncode == 1 and "job 999 not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "dataset": "ftp:nowhere"}))
    bad = cli(stack, "submit", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and "body.dataset" in bad.stderr and "Traceback" not in bad.stderr
    exported = cli(stack, "export", "999", "--format", "onnx")  # whatever the server answers
    assert exported.returncode == 1 and "HTTP 4" in exported.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "service.cli", "jobs", "--url", "http://127.0.0.1:9"],
        env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_cli_cancel_stops_a_job(server, tmp_path) -> None:
    stack, _, spec = server
    with Client(stack.url) as api:
        slow = {**spec, "finetune": {"method": "masked", "epochs": 200}, "budget": {"max_trials": 3}}
        job_id = api.submit(slow)["id"]
        for event in api.events(job_id):
            if event.kind == "trial.started":
                break
        cancelled = cli(stack, "cancel", str(job_id))
        assert cancelled.returncode == 0, cancelled.stderr
        assert api.wait(job_id)["state"] == "cancelled"


def test_client_registers_with_input_shape_and_key_map(server, tmp_path, digits_model) -> None:
    from safetensors.torch import load_file, save_file

    stack, _, _ = server
    renamed = {k.replace("fc1.", "0.").replace("fc2.", "2."): v
               for k, v in load_file(str(digits_model)).items()}  # fmt: skip
    save_file(renamed, str(tmp_path / "sequential.safetensors"))
    config = {"in_features": 64, "hidden": [64], "num_classes": 10}
    with Client(stack.url) as api:
        with pytest.raises(ApiError, match="key_map"):
            api.register_model(tmp_path / "sequential.safetensors", "mlp", config)
        model = api.register_model(tmp_path / "sequential.safetensors", "zoo:mlp", config,
                                   input_shape=[64], key_map={"prefix": {"0.": "fc1.", "2.": "fc2."}})  # fmt: skip
    assert model["input_shape"] == [64] and model["architecture"] == "zoo:mlp"


def test_cli_trials_table_shows_each_trials_fidelity_rung_and_parent(server) -> None:
    stack, _, spec = server
    rungs = {"max_trials": 2, "max_parallel": 1, "rungs": {"min_fraction": 0.5, "eta": 2}}
    with Client(stack.url) as api:
        job_id = api.submit({**spec, "budget": rungs})["id"]
        assert api.wait(job_id)["state"] == "succeeded"
        trials = {t["id"]: t for t in api.trials(job_id)}
    continued = [t for t in trials.values() if t["rung"] == 1]
    assert len(continued) == 1 and continued[0]["fidelity"] == 1.0  # the best of 2 continued
    table = cli(stack, "trials", str(job_id))
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "fidelity" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")][2:6] == ["state", "fidelity", "rung", "parent"]
    rows = {int(cells[0]): cells for cells in (
        [c.strip() for c in line.strip("│ ").split("│")]
        for line in table.stdout.splitlines() if line.startswith("│"))}  # fmt: skip
    for trial_id, t in trials.items():
        parent = "-" if t["parent"] is None else str(t["parent"])
        assert rows[trial_id][3:6] == [f"{t['fidelity']:.4g}", str(t["rung"]), parent]
    assert rows[continued[0]["id"]][3:6] == ["1", "1", str(continued[0]["parent"])]
