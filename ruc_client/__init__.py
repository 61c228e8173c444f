"""Python client of ruc-service (httpx; no torch): ``Client`` (sync) and ``AsyncClient`` (asyncio)."""

from ruc_client._shared import ENV_KEY, ENV_URL, RetryPolicy
from ruc_client.async_client import AsyncClient, apoll_job
from ruc_client.client import Client, poll_job
from ruc_client.errors import (
    ApiError,
    ChecksumError,
    ConnectionFailed,
    FieldError,
    PredictionFailed,
    RucClientError,
    WaitTimeout,
)
from ruc_client.models import (
    Artifact,
    Checkpoint,
    Dataset,
    EpochMetrics,
    Event,
    Job,
    Metrics,
    Page,
    Prediction,
)
from ruc_client.sse import (
    SSEParser,
    StreamMessage,
    StreamPolicy,
    StreamUnavailable,
    astream_job,
    stream_job,
)

__all__ = [
    "ENV_KEY",
    "ENV_URL",
    "ApiError",
    "Artifact",
    "AsyncClient",
    "Checkpoint",
    "ChecksumError",
    "Client",
    "ConnectionFailed",
    "Dataset",
    "EpochMetrics",
    "Event",
    "FieldError",
    "Job",
    "Metrics",
    "Page",
    "Prediction",
    "PredictionFailed",
    "RetryPolicy",
    "RucClientError",
    "SSEParser",
    "StreamMessage",
    "StreamPolicy",
    "StreamUnavailable",
    "WaitTimeout",
    "apoll_job",
    "astream_job",
    "poll_job",
    "stream_job",
]
