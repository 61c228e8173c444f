"""The one definition of the API's routes: each function builds a ``Call`` (method, path, query, body,
how to parse the answer, whether a retry is safe). ``Client`` and ``AsyncClient`` only execute them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from ruc_client.models import Artifact, Checkpoint, Dataset, Event, Job, Metrics, Page, Prediction

T = TypeVar("T")
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Safe to send again after a dropped connection or a 5xx/429: reads, and writes with an idempotency key.
    retry: bool = False


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda response: cls.model_validate(response.json())  # type: ignore[attr-defined]


def _nothing(_response: httpx.Response) -> None:
    return None


def _query(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# Datasets and checkpoints share their shape; uploads are built by the clients (streamed bodies).


def get_dataset(dataset_id: str) -> Call[Dataset]:
    return Call("GET", f"/v1/datasets/{dataset_id}", _model(Dataset), retry=True)


def list_datasets(
    *, status: str | None = None, after: str | None = None, limit: int = 20
) -> Call[Page[Dataset]]:
    params = _query(status=status, after=after, limit=limit)
    return Call("GET", "/v1/datasets", _model(Page[Dataset]), params=params, retry=True)


def delete_dataset(dataset_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/datasets/{dataset_id}", _nothing)


def get_checkpoint(checkpoint_id: str) -> Call[Checkpoint]:
    return Call("GET", f"/v1/checkpoints/{checkpoint_id}", _model(Checkpoint), retry=True)


def list_checkpoints(
    *, status: str | None = None, after: str | None = None, limit: int = 20
) -> Call[Page[Checkpoint]]:
    params = _query(status=status, after=after, limit=limit)
    return Call("GET", "/v1/checkpoints", _model(Page[Checkpoint]), params=params, retry=True)


def delete_checkpoint(checkpoint_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/checkpoints/{checkpoint_id}", _nothing)


def submit_job(spec: dict[str, Any], *, idempotency_key: str | None = None) -> Call[Job]:
    """``spec`` is the job spec (``dataset_id``, ``num_clusters``, ``base``, ``refine``, ...). A key is
    made when none is given, so the retries of this one call can never create a second job."""
    key = idempotency_key or f"ruc-client-{uuid.uuid4()}"
    return Call("POST", "/v1/jobs", _model(Job), json=spec, headers={IDEMPOTENCY_HEADER: key}, retry=True)


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _model(Job), retry=True)


def list_jobs(*, status: str | None = None, after: str | None = None, limit: int = 20) -> Call[Page[Job]]:
    params = _query(status=status, after=after, limit=limit)
    return Call("GET", "/v1/jobs", _model(Page[Job]), params=params, retry=True)


def cancel_job(job_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", _model(Job))


def delete_job(job_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/jobs/{job_id}", _nothing)


def list_events(job_id: str, *, after: int | None = None, limit: int = 100) -> Call[Page[Event]]:
    params = _query(after=after, limit=limit)
    return Call("GET", f"/v1/jobs/{job_id}/events", _model(Page[Event]), params=params, retry=True)


def get_metrics(job_id: str) -> Call[Metrics]:
    return Call("GET", f"/v1/jobs/{job_id}/metrics", _model(Metrics), retry=True)


def _result(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["result"])


def get_result(job_id: str) -> Call[dict[str, Any]]:
    """The result document (``base``, ``refined``, ``clean_set``, ``robustness``, ...) as a dict."""
    return Call("GET", f"/v1/jobs/{job_id}/result", _result, retry=True)


def _artifacts(response: httpx.Response) -> list[Artifact]:
    return [Artifact.model_validate(a) for a in response.json()["data"]]


def list_artifacts(job_id: str) -> Call[list[Artifact]]:
    return Call("GET", f"/v1/jobs/{job_id}/artifacts", _artifacts, retry=True)


def artifact_path(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/artifacts/{name}"


def predictions_path(job_id: str) -> str:
    """Where ``predict`` posts its images (multipart, streamed by the clients like uploads)."""
    return f"/v1/jobs/{job_id}/predictions"


def get_prediction(job_id: str, prediction_id: str) -> Call[Prediction]:
    return Call("GET", f"/v1/jobs/{job_id}/predictions/{prediction_id}", _model(Prediction), retry=True)


def parse_prediction(response: httpx.Response) -> Prediction:
    return Prediction.model_validate(response.json())


UPLOAD_PATHS = {"dataset": "/v1/datasets", "checkpoint": "/v1/checkpoints"}
UPLOAD_MODELS: dict[str, type[Dataset] | type[Checkpoint]] = {"dataset": Dataset, "checkpoint": Checkpoint}
