"""Settings of the service and the workers, read from `AUTOCOMPRESS_*` environment variables.

The defaults describe the embedded mode: a SQLite file and an artifact folder under `home`,
workers in-process. Setting `AUTOCOMPRESS_DATABASE_URL` (Postgres) and
`AUTOCOMPRESS_BROKER_URL` (Redis) switches to the distributed mode with the same code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

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
    max_dataset_elements: int = Field(
        1 << 28,
        ge=1,
        description="Most array elements an uploaded .npz dataset may declare, all four arrays "
        "together (1 GiB as float32), checked from its headers before anything is inflated; "
        "above it, a 422.",
    )
    max_model_params: int = Field(
        2_000_000_000,
        ge=1,
        le=2**31 - 1,
        description="Largest model a user may register, in parameters: counted on the meta "
        "device (nothing allocated) before the weights are read; above it, a 422.",
    )
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
    log_format: Literal["plain", "json"] = Field(
        "plain",
        description="Log lines as text (plain) or one JSON object per line (json), carrying "
        "job_id and trial_id where they apply.",
    )

    requeue_grace_seconds: float = Field(
        300.0,
        description="A queued trial whose message was sent this long ago and that no worker "
        "claimed is sent again by the sweeper (messages are hints; the row is the truth).",
    )
    visibility_timeout_seconds: int = Field(
        900,
        description="Redis broker visibility timeout: an unacknowledged message (its worker "
        "died) is delivered again after this long; a duplicate of a running trial claims nothing.",
    )
    db_retry_seconds: float = Field(
        60.0,
        description="How long a trial's result write and heartbeat retry a transient database "
        "error (connection lost, server restarting) before giving up, with backoff.",
    )
    orphan_grace_seconds: float = Field(
        3600.0,
        description="A file under the artifact root with no artifacts row, older than this, is "
        "removed by the sweeper (a worker died between writing it and committing its row).",
    )
    max_inflight_per_job: int = Field(
        8,
        ge=1,
        description="Trials of one job queued or running at once, whatever its max_parallel, so "
        "that one large job cannot fill the queue ahead of the others.",
    )
    max_parallel: int = Field(
        64, ge=1, description="The largest budget.max_parallel a job may ask for (422 above it)."
    )

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        if self.require_api_key and not self.secret_key.get_secret_value():
            raise ValueError(
                "AUTOCOMPRESS_REQUIRE_API_KEY is true but AUTOCOMPRESS_SECRET_KEY is empty: "
                "set AUTOCOMPRESS_SECRET_KEY (the HMAC key of stored API keys) to start"
            )
        return self

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
