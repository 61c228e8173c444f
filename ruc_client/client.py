"""``Client``: the synchronous client. Every route is an ``operations`` function; this class sends the
``Call`` it builds (retrying the safe ones) and adds what takes more than one request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar

import httpx

from ruc_client import operations as ops
from ruc_client._shared import (
    CHUNK_BYTES,
    ArtifactSink,
    HashingReader,
    JobBar,
    RetryPolicy,
    check,
    open_upload,
    prediction_body,
    resolve_settings,
    retryable_status,
    settled,
    verify_upload,
)
from ruc_client.errors import ApiError, ConnectionFailed, WaitTimeout
from ruc_client.models import Artifact, Checkpoint, Dataset, Event, Job, Prediction
from ruc_client.sse import StreamMessage, StreamPolicy, iter_stream, stream_job

P = ParamSpec("P")
T = TypeVar("T")
JobUpdates = Callable[["Client", str], Iterator[Job]]


def _bind(op: Callable[P, ops.Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(op(*args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


def poll_job(*, interval_s: float = 1.0) -> JobUpdates:
    """The polling source of ``wait``: ``GET /v1/jobs/{id}`` every ``interval_s`` until it ends. A
    streaming source has the same shape: ``(client, job_id) -> Iterator[Job]``."""

    def updates(client: Client, job_id: str) -> Iterator[Job]:
        while True:
            job = client.get_job(job_id)
            yield job
            if job.finished:
                return
            time.sleep(interval_s)

    return updates


class Client:
    """``Client(base_url, api_key)``; both default to ``RUC_API_URL`` / ``RUC_API_KEY``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, key = resolve_settings(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: ops.Call[T]) -> T:
        """Send ``call``; a safe one is retried on connection errors, 5xx and 429 with backoff."""
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=call.headers
                )
            except httpx.TransportError as exc:
                # A refused connection never reached the server: any call may go again.
                if last or not (call.retry or isinstance(exc, httpx.ConnectError)):
                    raise ConnectionFailed(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
                time.sleep(self.retry.delay(attempt))
                continue
            if call.retry and not last and retryable_status(response.status_code):
                time.sleep(self.retry.delay(attempt, response))
                continue
            return call.parse(check(response))
        raise AssertionError("unreachable")

    get_dataset = _bind(ops.get_dataset)
    list_datasets = _bind(ops.list_datasets)
    delete_dataset = _bind(ops.delete_dataset)
    get_checkpoint = _bind(ops.get_checkpoint)
    list_checkpoints = _bind(ops.list_checkpoints)
    delete_checkpoint = _bind(ops.delete_checkpoint)
    submit_job = _bind(ops.submit_job)
    get_job = _bind(ops.get_job)
    list_jobs = _bind(ops.list_jobs)
    cancel_job = _bind(ops.cancel_job)
    delete_job = _bind(ops.delete_job)
    list_events = _bind(ops.list_events)
    get_metrics = _bind(ops.get_metrics)
    get_result = _bind(ops.get_result)
    list_artifacts = _bind(ops.list_artifacts)
    get_prediction = _bind(ops.get_prediction)

    def _upload(
        self,
        kind: str,
        file: str | Path | bytes | BinaryIO,
        filename: str | None,
        params: dict[str, Any],
        progress: bool,
    ) -> Any:
        raw, name, owned = open_upload(file, filename)
        reader = HashingReader(raw, name=name, progress=progress)
        try:
            response = self._http.post(
                ops.UPLOAD_PATHS[kind],
                params=params,
                files={"file": (name, reader, "application/octet-stream")},
            )
            row = ops.UPLOAD_MODELS[kind].model_validate(check(response).json())
        finally:
            reader.close()
            if owned:
                raw.close()
        verify_upload(f"{kind} {row.id}", reader, row.sha256)
        return row

    def upload_dataset(
        self, file: str | Path | bytes | BinaryIO, *, filename: str | None = None, progress: bool = False
    ) -> Dataset:
        """Stream ``file`` (a path, bytes or a binary file) as a dataset; the sha256 computed while
        sending must equal the server's (else ``ChecksumError``). Validation continues on the server:
        ``wait_dataset`` waits for ``ready`` or ``invalid``."""
        return self._upload("dataset", file, filename, {}, progress)

    def upload_checkpoint(
        self,
        file: str | Path | bytes | BinaryIO,
        *,
        filename: str | None = None,
        backbone: str | None = None,
        normalisation: str | None = None,
        mean: str | None = None,
        std: str | None = None,
        progress: bool = False,
    ) -> Checkpoint:
        """As ``upload_dataset``, with the query fields the weights cannot tell (see the API docs)."""
        stated = ops._query(backbone=backbone, normalisation=normalisation, mean=mean, std=std)
        return self._upload("checkpoint", file, filename, stated, progress)

    def wait_dataset(self, dataset_id: str, *, timeout_s: float = 300.0, interval_s: float = 0.5) -> Dataset:
        """Poll until the dataset is no longer ``validating``."""
        return self._wait_upload(lambda: self.get_dataset(dataset_id), timeout_s, interval_s)

    def wait_checkpoint(
        self, checkpoint_id: str, *, timeout_s: float = 300.0, interval_s: float = 0.5
    ) -> Checkpoint:
        return self._wait_upload(lambda: self.get_checkpoint(checkpoint_id), timeout_s, interval_s)

    def _wait_upload(self, get: Callable[[], T], timeout_s: float, interval_s: float) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            row = get()
            if row.status != "validating":  # type: ignore[attr-defined]
                return row
            if time.monotonic() > deadline:
                raise WaitTimeout(f"still validating after {timeout_s:.0f} s")
            time.sleep(interval_s)

    def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every job of this key, newest first, fetching pages as needed."""
        after: str | None = None
        while True:
            page = self.list_jobs(status=status, after=after, limit=page_size)
            yield from page.data
            if not page.has_more or page.next_after is None:
                return
            after = str(page.next_after)

    def iter_events(self, job_id: str, *, after: int | None = None, page_size: int = 100) -> Iterator[Event]:
        """The job's events so far, oldest first, after event id ``after``."""
        while True:
            page = self.list_events(job_id, after=after, limit=page_size)
            yield from page.data
            if not page.has_more:
                return
            after = int(page.next_after) if page.next_after is not None else None

    def stream_events(
        self, job_id: str, *, last_event_id: str | None = None, policy: StreamPolicy | None = None
    ) -> Iterator[StreamMessage]:
        """The job's live messages (``event``, ``metrics``, ``status``, heartbeat ``comment``) until its
        final status; resumes after ``last_event_id`` and reconnects on its own."""
        return iter_stream(self, job_id, last_event_id=last_event_id, policy=policy)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool = True,
        updates: JobUpdates | None = None,
    ) -> Job:
        """Follow the job until it ends (any final status; check ``job.status``), drawing a live bar
        with stage, epoch i/N and ETA. ``updates`` is the source of job snapshots (default:
        ``stream_job()``, the event stream, which falls back to ``poll_job()``)."""
        source = (updates or stream_job())(self, job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = JobBar(job_id, enabled=progress)
        try:
            for job in source:
                bar.update(job)
                if job.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status} after {timeout_s:.0f} s")
        finally:
            bar.close()
        raise WaitTimeout(f"job {job_id}: the update source ended before the job did")

    def submit_prediction(
        self,
        job_id: str,
        file: str | Path | bytes | BinaryIO | None = None,
        *,
        filename: str | None = None,
        dataset_id: str | None = None,
    ) -> Prediction:
        """Send the images of ``file`` (as ``predict``) and return the prediction as answered: finished
        when the server answered within its wait (200; ``failed`` is returned, not raised), else
        ``queued`` or ``running`` (202), to follow with ``wait_prediction``. A 422 raises ``ApiError``."""
        body, to_close = prediction_body(file, filename, dataset_id)
        try:
            response = self._http.post(ops.predictions_path(job_id), **body)
        finally:
            if to_close is not None:
                to_close.close()
        return ops.parse_prediction(check(response))

    def wait_prediction(
        self, job_id: str, prediction: Prediction, *, timeout_s: float = 600.0, interval_s: float = 0.5
    ) -> Prediction:
        """Poll ``prediction`` every ``interval_s`` until it ends: the succeeded one, or
        ``PredictionFailed`` (``invalid`` or ``failed``); ``WaitTimeout`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (done := settled(prediction)) is None:
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"prediction {prediction.id} still {prediction.status} after {timeout_s:.0f} s"
                )
            time.sleep(interval_s)
            prediction = self.get_prediction(job_id, prediction.id)
        return done

    def predict(
        self,
        job_id: str,
        file: str | Path | bytes | BinaryIO | None = None,
        *,
        filename: str | None = None,
        dataset_id: str | None = None,
        timeout_s: float = 600.0,
        interval_s: float = 0.5,
    ) -> Prediction:
        """Assign the images of ``file`` (a path, bytes or a binary file: ``.npz`` with ``images``
        uint8 (N, H, W, C), or an image-folder archive, as the job's dataset; a feature job: ``.npz``
        with its feature array, float (N, D)), or every image of your ready dataset ``dataset_id``
        (one of the two), with the job's refined model. A small request
        is answered at once (200); a larger one (202) is polled every ``interval_s`` until it ends.
        Returns the succeeded ``Prediction`` (``assignments``, ``probabilities``); images that do not
        fit the job raise ``ApiError`` (422, ``errors`` name the field: ``dataset_id`` for a
        dataset) or, found by the worker later, ``PredictionFailed``; so does a failure (a dataset
        deleted before the worker read it: ``dataset_deleted``)."""
        prediction = self.submit_prediction(job_id, file, filename=filename, dataset_id=dataset_id)
        return self.wait_prediction(job_id, prediction, timeout_s=timeout_s, interval_s=interval_s)

    def download_artifact(
        self, job_id: str, name: str, dest: str | Path | None = None, *, progress: bool = False
    ) -> Path:
        """Stream artifact ``name`` to ``dest`` (default: ``./name``); its sha256 must equal the listed
        one (else ``ChecksumError`` and no file is left)."""
        artifact = self._artifact(job_id, name)
        sink = ArtifactSink(Path(dest or name), name=name, size=artifact.size, progress=progress)
        try:
            with self._http.stream("GET", ops.artifact_path(job_id, name)) as response:
                if response.status_code >= 400:
                    response.read()
                    check(response)
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    sink.write(chunk)
        except BaseException:
            sink.abort()
            raise
        return sink.finish(artifact.sha256)

    def _artifact(self, job_id: str, name: str) -> Artifact:
        for artifact in self.list_artifacts(job_id):
            if artifact.name == name:
                return artifact
        raise ApiError(
            404, title="Not Found", detail=f"job {job_id!r} has no artifact {name!r}", code="not-found"
        )
