"""Settings of the service and the workers, read from `AUTOCOMPRESS_*` environment variables.

The defaults describe the embedded mode: a SQLite file and an artifact folder under `home`,
workers in-process. Setting `AUTOCOMPRESS_DATABASE_URL` (Postgres) and
`AUTOCOMPRESS_BROKER_URL` (Redis) switches to the distributed mode with the same code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All configuration of autocompress; every field is `AUTOCOMPRESS_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="AUTOCOMPRESS_", extra="ignore")

    home: Path = Field(
        Path("autocompress-data"),
        description="Folder for the embedded mode's SQLite file, artifacts and cached baselines.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL; empty means sqlite:///<home>/autocompress.db (embedded).",
    )
    broker_url: str = Field(
        "",
        description="Celery broker URL (redis://...); empty means in-process workers (embedded).",
    )
    artifact_root: Path | None = Field(
        None, description="Where weights and checkpoints are stored; default <home>/artifacts."
    )
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Folders that `idx:` and `npz:` dataset paths may point into; "
        "default <home>/datasets. JSON list in the environment.",
    )
    trusted_uploads: bool = Field(
        False, description="Allow pickled (.pt) weight uploads. Never switch on for untrusted users."
    )
    require_api_key: bool = Field(
        False, description="Require `Authorization: Bearer <key>` on /v1 (keys: autocompress apikey)."
    )
    secret_key: SecretStr = Field(
        SecretStr(""), description="HMAC key for stored API-key hashes; set it in production."
    )
    max_upload_bytes: int = Field(1 << 30, description="Largest accepted upload, in bytes.")
    host: str = "127.0.0.1"
    port: int = 8000
    embedded_workers: int = Field(1, description="Trial threads in embedded mode.")
    lease_seconds: float = Field(
        120.0, description="A running trial whose heartbeat is older than this is re-queued."
    )
    heartbeat_seconds: float = Field(10.0, description="How often a running trial renews its lease.")
    sweep_seconds: float = Field(30.0, description="How often the sweeper looks for expired leases.")
    max_attempts: int = Field(3, description="Attempts per trial before it is failed for good.")
    task_time_limit: int = Field(6 * 3600, description="Hard time limit of one trial, in seconds.")
    latency_batch_size: int = Field(1, description="Batch size of the latency_ms measurement.")

    @model_validator(mode="after")
    def _defaults_under_home(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'autocompress.db').resolve()}"
        if self.artifact_root is None:
            self.artifact_root = self.home / "artifacts"
        if not self.data_roots:
            self.data_roots = [self.home / "datasets"]
        return self

    @property
    def embedded(self) -> bool:
        """True when trials run in-process (no broker configured)."""
        return not self.broker_url

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        """Create the folders the settings point to (home, artifacts, data roots)."""
        for path in (self.home, self.artifact_root, *self.data_roots):
            Path(path).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
