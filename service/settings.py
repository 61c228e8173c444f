"""Service configuration, read from the environment (prefix ``RUC_``).

Imported by the API and the worker alike, so it depends on pydantic only: no FastAPI, no torch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3
MiB = 1024**2
KiB = 1024


class Settings(BaseSettings):
    """All knobs of the service. Paths are made absolute at load time so API and worker agree."""

    model_config = SettingsConfigDict(env_prefix="RUC_", extra="ignore")

    data_dir: Path = Field(
        default=Path("./.ruc-data"), description="Root of the SQLite file, broker and storage"
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; default sqlite:///{data_dir}/ruc.sqlite3. Postgres: postgresql+psycopg://...",
    )
    broker_url: str = Field(
        default="filesystem://",
        description="Celery broker: redis://... or filesystem:// (messages in {data_dir}/broker)",
    )
    max_upload_bytes: int = Field(default=2 * GiB, ge=1)
    upload_chunk_bytes: int = Field(default=1 * MiB, ge=1024)
    lease_seconds: int = Field(
        default=60, ge=5, description="A running job whose lease lapses may be re-claimed"
    )
    heartbeat_seconds: int = Field(default=10, ge=1, description="How often a worker renews its lease")
    max_attempts: int = Field(default=3, ge=1, description="Runs of one job before it is marked failed")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="In-process cache of key hash -> owner; a revoked key lives at most this long",
    )
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    webhook_secret: str = Field(
        default="",
        description="Standard Webhooks key for callback_url deliveries (whsec_<base64>, or any string "
        "used as UTF-8 bytes); empty: one is generated once into {data_dir}/webhook_secret",
    )
    webhook_allow_hosts: str = Field(
        default="",
        description="Comma-separated host names, IPs or CIDRs that callbacks may reach although they are "
        "not public addresses (loopback, private, link-local ...)",
    )
    webhook_retry_seconds: float = Field(
        default=10.0, gt=0, description="Delay before a failed callback's first retry; doubles each time"
    )
    requeue_seconds: int = Field(
        default=300,
        ge=1,
        description="A queued job or validating upload unclaimed this long is sent to the broker again",
    )
    max_body_bytes: int = Field(
        default=256 * KiB,
        ge=1024,
        description="Cap of every non-upload request body, counted on the receive stream (over it: 413)",
    )
    max_header_bytes: int = Field(
        default=16 * KiB,
        ge=1024,
        description="Cap of a request's line and headers together, enforced by the HTTP parser before the "
        "app sees the request (over it: 400 and the connection closed)",
    )
    metrics_token: str = Field(
        default="",
        description="Bearer token of GET /metrics; when set, /metrics needs it and adds job counts by status",
    )
    quota_active_jobs: int = Field(
        default=50, ge=0, description="Queued + running jobs per API key (0: no limit; over it: 429)"
    )
    quota_stored_bytes: int = Field(
        default=100 * GiB,
        ge=0,
        description="Bytes of datasets, checkpoints and artifacts per API key (0: no limit; over it: 429)",
    )
    quota_uploads_per_hour: int = Field(
        default=100, ge=0, description="Dataset + checkpoint uploads per API key in any hour (0: no limit)"
    )
    job_time_limit_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        description="Wall time of one attempt of a job; the worker fails it past this (0: no limit)",
    )
    retention_days: float = Field(
        default=30,
        ge=0,
        description="Failed and cancelled jobs' files and invalid uploads' files older than this are "
        "removed by the worker's sweep and `ruc-service gc` (0: keep forever)",
    )
    worker_memory_bytes: int = Field(
        default=24 * GiB,
        ge=0,
        description="Memory one job may use on a worker; a submit estimated above it is a 422 (0: no check)",
    )
    device_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory the worker's preflight lets one job's RUC stage use on its device: it shrinks "
        "refine.batch_size (to max(16, B/8)) or fails the job when a dry run peaks above it. 0: the GPU's "
        "free memory on CUDA, worker_memory_bytes on the CPU",
    )
    worker_devices: str = Field(
        default="",
        description="Devices one job of this worker trains on: cuda:0,cuda:1 | all (every visible GPU) | "
        "cpu:N (N CPU ranks, gloo; for tests) | one device; several run the base fit and RUC epochs "
        "data-parallel (README, 'One job on several GPUs'). Empty: cuda if available, else cpu",
    )
    distributed_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A rank waiting this long in a collective of a multi-device job gives up (the job "
        "fails and its retry resumes from the last epoch checkpoint)",
    )
    stream_poll_seconds: float = Field(
        default=0.5, gt=0, description="How often GET /v1/jobs/{id}/events/stream reads the database"
    )
    stream_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Idle time after which the event stream sends a `: ping` comment"
    )
    stream_max_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Lifetime of one event stream; clients reconnect with Last-Event-ID to go on",
    )
    stream_batch: int = Field(default=100, ge=1, description="Events and metric rows read per poll, each")

    predict_sync_max_images: int = Field(
        default=256,
        ge=0,
        description="A prediction request of at most this many images waits for its answer (200); "
        "a larger one is answered 202 at once, to poll",
    )
    predict_sync_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a small prediction request waits for the worker before it is answered "
        "202 with the URL to poll",
    )
    predict_max_images: int = Field(
        default=10_000, ge=1, description="Images in one prediction request (over it: 422)"
    )
    predict_max_values: int = Field(
        default=1_000_000,
        ge=1,
        description="Images x clusters of one prediction request: bounds the probabilities stored and "
        "returned (over it: 422)",
    )
    predict_max_upload_bytes: int = Field(
        default=256 * MiB, ge=1, description="Size of one prediction request's file (over it: 413)"
    )
    predict_time_limit_seconds: int = Field(
        default=600, ge=1, description="Wall time of one prediction on a worker; past it: failed"
    )

    validation_memory_bytes: int = Field(
        default=2 * GiB,
        ge=16 * MiB,
        description="Memory an upload's validation child may allocate beyond its interpreter and "
        "libraries, plus validation_memory_upload_factor x the upload's size (RLIMIT_AS)",
    )
    validation_memory_upload_factor: float = Field(
        default=8.0, ge=0, description="Per byte of the upload, added to validation_memory_bytes"
    )
    validation_cpu_seconds: int = Field(
        default=300,
        ge=1,
        description="CPU seconds of one validation child, plus validation_cpu_seconds_per_gib per GiB "
        "of the upload (RLIMIT_CPU)",
    )
    validation_cpu_seconds_per_gib: int = Field(default=600, ge=0)

    storage_backend: Literal["local", "s3"] = Field(
        default="local",
        description="Where uploads, artifacts and resume files live: a local folder ({data_dir}/storage) "
        "or an S3-compatible bucket (workers then keep only scratch copies in {data_dir}/scratch)",
    )
    s3_bucket: str = Field(default="", description="Bucket of the s3 backend (needed with it)")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket, e.g. ruc/prod")
    s3_endpoint_url: str = Field(
        default="", description="S3-compatible endpoint (MinIO, Ceph ...); empty: AWS's own"
    )
    s3_region: str = Field(default="", description="Region of the bucket; empty: boto3's default chain")
    s3_access_key_id: str = Field(
        default="", description="Empty: boto3's default chain (AWS_ACCESS_KEY_ID, ~/.aws, instance role)"
    )
    s3_secret_access_key: SecretStr = Field(default=SecretStr(""), description="With s3_access_key_id")
    s3_part_bytes: int = Field(
        default=8 * MiB,
        ge=5 * MiB,
        description="Multipart part size: what an upload in flight holds in memory (S3's minimum is 5 MiB)",
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'ruc.sqlite3'}"
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("RUC_S3_BUCKET: needed with RUC_STORAGE_BACKEND=s3")
        self.s3_prefix = self.s3_prefix.strip("/")
        return self

    @property
    def storage_dir(self) -> Path:
        """Uploads and artifacts: datasets/<id>/, checkpoints/<id>/, jobs/<id>/ (row paths are relative)."""
        return self.data_dir / "storage"

    @property
    def scratch_dir(self) -> Path:
        """A worker's private copies with a remote store: fetched inputs, job work folders."""
        return self.data_dir / "scratch"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    def broker_transport_options(self) -> dict[str, Any]:
        """Celery ``broker_transport_options``: the folders of kombu's filesystem transport; {} for others.

        Producer and consumer share one folder, so ``data_folder_in`` equals ``data_folder_out``.
        """
        if not self.is_filesystem_broker:
            return {}
        queue_dir = self.broker_dir / "queue"
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(self.broker_dir / "processed"),
            # Exchange bindings; kombu's default is a folder relative to the working directory.
            "control_folder": str(self.broker_dir / "control"),
            "store_processed": False,
        }

    def ensure_dirs(self) -> None:
        """Create the data, storage (local backend) and (filesystem) broker folders; idempotent."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.storage_backend == "local":
            self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.is_filesystem_broker:
            for key in ("data_folder_in", "processed_folder", "control_folder"):
                Path(self.broker_transport_options()[key]).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the environment."""
    return Settings()
