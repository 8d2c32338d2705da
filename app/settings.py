"""The one settings object (environment variables prefixed KD_, or a .env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KD_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str = Field(default="", description="empty: SQLite under data_dir")
    broker_url: str = Field(default="", description="Redis URL; empty: the local executor")
    host: str = "127.0.0.1"
    port: int = 8000

    max_upload_bytes: int = 512 * 1024**2
    max_archive_unpacked_bytes: int = 2 * 1024**3
    local_workers: int = Field(default=1, ge=0, le=64, description="local executor threads")
    poll_interval_s: float = 0.5

    lease_s: float = Field(default=60.0, gt=0, description="a worker's claim lasts this long")
    heartbeat_s: float = Field(default=2.0, gt=0, description="lease renewal + event flush")
    max_attempts: int = Field(default=3, ge=1)
    cancel_grace_s: float = Field(default=20.0, ge=0)
    sweep_interval_s: float = 10.0
    republish_after_s: float = Field(default=30.0, description="queued this long: publish again")
    auth_cache_s: float = Field(
        default=5.0, ge=0, description="reuse a key's lookup this long (0: every request)"
    )
    bootstrap_api_key: str = Field(default="", description="create this key at start (tests)")
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 4
    storage_url: str = Field(
        default="",
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[\w./-]*)?)?$",
        description="empty: files under data_dir; s3://bucket/prefix: S3-compatible storage",
    )
    s3_endpoint_url: str = Field(default="", description="e.g. http://minio:9000; empty: AWS")
    s3_region: str = "us-east-1"
    log_format: Literal["json", "text"] = "json"
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")

    @model_validator(mode="after")
    def _production_is_explicit(self) -> Settings:
        if self.environment == "production":
            if not self.database_url or self.database_url.startswith("sqlite"):
                raise ValueError("production needs KD_DATABASE_URL pointing at PostgreSQL")
            if not self.broker_url:
                raise ValueError("production needs KD_BROKER_URL (Redis)")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kdservice.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
