"""docker-compose.yml agrees with the settings and the CLI (no Docker engine runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.cli import build_parser
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_of(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def test_services_and_commands() -> None:
    services = load()["services"]
    assert set(services) >= {"postgres", "redis", "api", "worker"}
    api = " ".join(command_of(services["api"]))
    assert "autocompress db upgrade" in api and "autocompress serve" in api
    assert command_of(services["worker"])[:2] == ["autocompress", "worker"]
    parser = build_parser()  # the commands exist with these arguments
    parser.parse_args(command_of(services["worker"])[1:])
    parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "8000"])


def test_environment_matches_settings(monkeypatch) -> None:  # noqa: ANN001
    services = load()["services"]
    known = {f"AUTOCOMPRESS_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker"):
        env = services[name]["environment"]
        ours = {k for k in env if k.startswith("AUTOCOMPRESS_")}
        assert ours <= known, ours - known
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()  # parses exactly as the containers would
        assert [str(p) for p in settings.data_roots] == ["/data"]
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert "@postgres:" in settings.database_url
        assert settings.broker_url.startswith("redis://redis:")
        assert not settings.embedded


def test_worker_reserves_one_gpu_and_shares_artifacts_with_api() -> None:
    services = load()["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and len(devices[0]["device_ids"]) == 1
    assert "CUDA_VISIBLE_DEVICES" in worker["environment"]
    mounts = lambda s: {v.split(":")[0] for v in services[s]["volumes"]}  # noqa: E731
    assert "artifacts" in mounts("api") & mounts("worker")
    pg_db = services["postgres"]["environment"]["POSTGRES_DB"]
    assert services["api"]["environment"]["AUTOCOMPRESS_DATABASE_URL"].endswith(f"/{pg_db}")


def test_flower_watches_the_same_broker_as_the_workers() -> None:
    services = load()["services"]
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower")
    broker = services["worker"]["environment"]["AUTOCOMPRESS_BROKER_URL"]
    assert f"--broker={broker}" in command_of(flower) and "flower" in command_of(flower)
    assert "redis" in flower["depends_on"]
    assert any(str(p).endswith(":5555") for p in flower["ports"])
