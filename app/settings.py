"""The one settings object (environment variables prefixed KD_, or a .env file)."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def secrets_key_bytes(text: str) -> bytes:
    """KD_SECRETS_KEY's 32 bytes, from base64; ValueError says what is wrong, never
    what the key is."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("KD_SECRETS_KEY is not base64 (32 random bytes)") from None
    if len(key) != 32:
        raise ValueError(f"KD_SECRETS_KEY holds {len(key)} bytes; it needs 32")
    return key


class Settings(BaseSettings):
    # an error names the setting, never quotes its value (keys, passwords in URLs)
    model_config = SettingsConfigDict(
        env_prefix="KD_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("data")
    database_url: str = Field(default="", description="empty: SQLite under data_dir")
    broker_url: str = Field(default="", description="Redis URL; empty: the local executor")
    host: str = "127.0.0.1"
    port: int = 8000

    # sizes a client controls, each checked before the work is done (README: security)
    max_upload_bytes: int = 512 * 1024**2
    max_archive_unpacked_bytes: int = 2 * 1024**3
    # uploads in parts (/v1/uploads): a file too large for one request
    max_multipart_bytes: int = Field(
        default=64 * 1024**3, ge=1, description="the declared size of an upload in parts"
    )
    upload_part_bytes: int = Field(
        default=64 * 1024**2, ge=64 * 1024, le=5 * 1024**3, description="each part's size"
    )
    # datasets by reference (app.services.dataset_refs)
    dataset_buckets: str = Field(
        default="",
        max_length=4096,
        description="comma-separated S3 buckets jobs may read datasets from "
        "(s3://<bucket>/<tenant name>/...: each tenant its own prefix)",
    )
    dataset_roots: str = Field(
        default="",
        max_length=4096,
        description="comma-separated name=/abs/folder local dataset roots "
        "(local://<name>/<path>: each tenant its own subfolder <folder>/<tenant name>/)",
    )
    dataset_cache_bytes: int = Field(
        default=200 * 1024**3,
        ge=1,
        description="bound of a worker's copy of S3 datasets (KD_DATA_DIR/dataset-cache)",
    )
    max_open_uploads: int = Field(default=8, ge=1, description="per tenant, not completed")
    upload_expire_s: int = Field(
        default=24 * 3600, ge=60, description="an upload not completed by then is deleted"
    )
    max_json_body_bytes: int = Field(default=1024**2, ge=1024, description="413 above this")
    max_model_params: int = Field(default=200_000_000, ge=1, description="per model")
    max_activation_bytes: int = Field(
        default=16 * 1024**3, ge=1, description="estimated activations of one training batch"
    )
    max_dataset_bytes: int = Field(
        default=8 * 1024**3, ge=1, description="the decoded dataset (float32) in memory"
    )
    max_sweep_trial_epochs: int = Field(
        default=2_000, ge=1, description="a sweep's whole budget: its trials x their epochs"
    )
    sweep_sizing_s: float = Field(
        default=5.0,
        gt=0,
        description="seconds a submission spends sizing a sweep's distinct trials; the "
        "worker sizes every one before the job starts",
    )
    default_max_runtime_s: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="a job's max_runtime_s when its spec sets none: no run holds a worker forever",
    )
    # per-tenant defaults (a tenant's own row may override them: `kd keys limits`)
    max_active_jobs: int = Field(default=50, ge=1, description="queued + running per tenant")
    submissions_per_minute: int = Field(default=120, ge=1)
    max_stored_bytes: int = Field(default=50 * 1024**3, ge=0, description="files + artifacts")
    max_priority: int = Field(
        default=4, ge=0, le=9, description="highest priority a tenant may use"
    )
    # what the executors can run: comma-separated queues (pools); empty: the local
    # executor's own pools (kd, kd.x2..kd.x<local_max_gpus>) or, with a broker, any pool
    pools: str = ""
    local_max_gpus: int = Field(default=1, ge=1, le=16, description="local executor: gpus <= this")
    local_workers: int = Field(default=1, ge=0, le=64, description="local executor threads")
    training_launch: Literal["process", "thread"] = Field(
        default="process",
        description="how a job's training starts (worker.launch): a process of its own "
        "(cancel kills it whole; it dies with its worker), or a thread of the worker, "
        "for tests of what the service records (no kill, no isolation)",
    )
    teacher_cache_bytes: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="bound of the on-disk teacher cache of this host's jobs (kdcore.image."
        "teacher_cache), least recently used keys deleted first; 0: no cache",
    )
    job_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="CPU threads per training process; 0: the usable cores divided by the "
        "jobs one executor process runs at once (worker.supervisor.threads_per_job)",
    )
    poll_interval_s: float = 0.5
    # experiment tracking (worker.tracking): each finished job logged as an MLflow run
    mlflow_uri: str = Field(
        default="",
        max_length=2048,
        description="MLflow tracking server (http://host:5000) or store URI the workers log "
        "every finished job to (parameters, per-epoch metrics, outputs); empty: none. A job "
        "opts out with tracking.mlflow: false",
    )
    mlflow_experiment: str = Field(default="kdservice", min_length=1, max_length=200)
    mlflow_timeout_s: float = Field(
        default=60.0, gt=0, description="per HTTP request to the tracking server"
    )

    lease_s: float = Field(default=60.0, gt=0, description="a worker's claim lasts this long")
    heartbeat_s: float = Field(default=2.0, gt=0, description="lease renewal + event flush")
    # one job on several hosts (resources.nodes, docs/multi-host.md)
    node_addr: str = Field(
        default="",
        max_length=200,
        description="this worker's address on the network between hosts, where the other "
        "hosts' ranks reach its ranks; empty: this worker takes no multi-host job",
    )
    node_ifname: str = Field(
        default="",
        max_length=15,
        description="the network interface of node_addr: gloo and NCCL bind there "
        "(GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME); empty: their own choice",
    )
    rendezvous_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="the port node 0's agent hosts the rendezvous on; 0: any free port",
    )
    collective_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="a multi-host job's ranks give up on a collective (all-reduce) after "
        "this long: a host cut off from the network fails the attempt, which is requeued",
    )
    gang_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="how long a worker holds its offer for a multi-host job before it "
        "withdraws and takes other work",
    )
    max_attempts: int = Field(default=3, ge=1)
    cancel_grace_s: float = Field(default=20.0, ge=0)
    keep_checkpoints: int = Field(
        default=2, ge=1, description="a job keeps its newest N checkpoints (+ the resumed one)"
    )
    sweep_interval_s: float = 10.0
    republish_after_s: float = Field(default=30.0, description="queued this long: publish again")
    auth_cache_s: float = Field(
        default=5.0, ge=0, description="reuse a key's lookup this long (0: every request)"
    )
    job_cache_bytes: int = Field(
        default=64 << 20, ge=0, description="rendered finished jobs kept per API process"
    )
    job_cache_s: float = Field(
        default=5.0, ge=0, description="a cached finished job is checked in the database after"
    )
    read_threads: int = Field(
        default=2, ge=1, le=64, description="threads for job reads' queries, per API process"
    )
    bootstrap_api_key: str = Field(default="", description="create this key at start (tests)")
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="per attempt")
    webhook_attempts: int = Field(default=4, ge=1)
    webhook_concurrency: int = Field(default=4, ge=1, le=64, description="attempts at once")
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_allow: str = Field(
        default="",
        description="comma-separated host names, addresses or networks (CIDR) that webhooks "
        "may reach although they are not public (on-premises receivers)",
    )
    endpoint_allow: str = Field(
        default="",
        description="comma-separated host names, addresses or networks (CIDR) that teacher "
        "endpoints may be although they are not public (an in-house vLLM server); every "
        "other endpoint must resolve to public addresses only",
    )
    secrets_key: SecretStr = Field(
        default=SecretStr(""),
        description="the key that encrypts stored credentials: 32 random bytes, base64 "
        "(`python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'`); "
        "the same on every API process and worker. Empty: a key generated once in "
        "data_dir/secrets.key (one host only)",
    )
    metrics_token: str = Field(default="", description="if set, /metrics needs this bearer")
    metrics_cache_s: float = Field(default=10.0, ge=0, description="job figures reused this long")
    storage_url: str = Field(
        default="",
        pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[\w./-]*)?)?$",
        description="empty: files under data_dir; s3://bucket/prefix: S3-compatible storage",
    )
    s3_endpoint_url: str = Field(default="", description="e.g. http://minio:9000; empty: AWS")
    s3_region: str = "us-east-1"
    # auto: readable lines on an interactive terminal, JSON lines to pipes and files
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, data_dir: Path) -> Path:
        # once, here: every request asks for db_url, which must not cost a system call
        return data_dir.expanduser().absolute()

    @field_validator("secrets_key")
    @classmethod
    def _a_key_or_none(cls, key: SecretStr) -> SecretStr:
        # checked at start-up, not at the first credential a client stores (a 409 then
        # told a client about the operator's mistake)
        if key.get_secret_value().strip():
            secrets_key_bytes(key.get_secret_value())
        return key

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
        return self.database_url or f"sqlite:///{self.data_dir.absolute() / 'kdservice.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    def served_pools(self) -> set[str] | None:
        """The queues some executor of this deployment takes jobs from; None: unknown
        (Celery workers with no KD_POOLS list), so any pool is accepted."""
        if self.pools.strip():
            return {p.strip() for p in self.pools.split(",") if p.strip()}
        if self.broker_url:
            return None
        return {"kd", *(f"kd.x{n}" for n in range(2, self.local_max_gpus + 1))}

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def uploads_dir(self) -> Path:
        """Parts of uploads in progress (shared by every API process, as files are)."""
        return self.data_dir / "uploads"

    @property
    def run_secrets_dir(self) -> Path:
        """Key files handed to running jobs (mode 0600, removed when the attempt ends)."""
        return self.data_dir / "run-secrets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def teacher_cache_dir(self) -> Path:
        """One folder per tenant: a tenant's jobs reuse only its own teachers' outputs."""
        return self.data_dir / "teacher-cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
