"""``AsyncClient``: the same routes (``operations``) and the same behaviour as ``Client``, on asyncio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from ruc_client.sse import StreamMessage, StreamPolicy, aiter_stream, astream_job

P = ParamSpec("P")
T = TypeVar("T")
AsyncJobUpdates = Callable[["AsyncClient", str], AsyncIterator[Job]]


def _bind(op: Callable[P, ops.Call[T]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(op(*args, **kwargs))

    method.__name__, method.__doc__ = op.__name__, op.__doc__
    return method


def apoll_job(*, interval_s: float = 1.0) -> AsyncJobUpdates:
    """The polling source of ``AsyncClient.wait`` (see ``poll_job``)."""

    async def updates(client: AsyncClient, job_id: str) -> AsyncIterator[Job]:
        while True:
            job = await client.get_job(job_id)
            yield job
            if job.finished:
                return
            await asyncio.sleep(interval_s)

    return updates


class AsyncClient:
    """``async with AsyncClient(base_url, api_key) as client: ...``; defaults as ``Client``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, key = resolve_settings(base_url, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: ops.Call[T]) -> T:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.json, headers=call.headers
                )
            except httpx.TransportError as exc:
                if last or not (call.retry or isinstance(exc, httpx.ConnectError)):
                    raise ConnectionFailed(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if call.retry and not last and retryable_status(response.status_code):
                await asyncio.sleep(self.retry.delay(attempt, response))
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

    async def _upload(
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
            response = await self._http.post(
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

    async def upload_dataset(
        self, file: str | Path | bytes | BinaryIO, *, filename: str | None = None, progress: bool = False
    ) -> Dataset:
        return await self._upload("dataset", file, filename, {}, progress)

    async def upload_checkpoint(
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
        stated = ops._query(backbone=backbone, normalisation=normalisation, mean=mean, std=std)
        return await self._upload("checkpoint", file, filename, stated, progress)

    async def wait_dataset(
        self, dataset_id: str, *, timeout_s: float = 300.0, interval_s: float = 0.5
    ) -> Dataset:
        deadline = time.monotonic() + timeout_s
        while (row := await self.get_dataset(dataset_id)).status == "validating":
            if time.monotonic() > deadline:
                raise WaitTimeout(f"dataset {dataset_id} still validating after {timeout_s:.0f} s")
            await asyncio.sleep(interval_s)
        return row

    async def wait_checkpoint(
        self, checkpoint_id: str, *, timeout_s: float = 300.0, interval_s: float = 0.5
    ) -> Checkpoint:
        deadline = time.monotonic() + timeout_s
        while (row := await self.get_checkpoint(checkpoint_id)).status == "validating":
            if time.monotonic() > deadline:
                raise WaitTimeout(f"checkpoint {checkpoint_id} still validating after {timeout_s:.0f} s")
            await asyncio.sleep(interval_s)
        return row

    async def iter_jobs(self, *, status: str | None = None, page_size: int = 100) -> AsyncIterator[Job]:
        after: str | None = None
        while True:
            page = await self.list_jobs(status=status, after=after, limit=page_size)
            for job in page.data:
                yield job
            if not page.has_more or page.next_after is None:
                return
            after = str(page.next_after)

    async def iter_events(
        self, job_id: str, *, after: int | None = None, page_size: int = 100
    ) -> AsyncIterator[Event]:
        while True:
            page = await self.list_events(job_id, after=after, limit=page_size)
            for event in page.data:
                yield event
            if not page.has_more:
                return
            after = int(page.next_after) if page.next_after is not None else None

    def stream_events(
        self, job_id: str, *, last_event_id: str | None = None, policy: StreamPolicy | None = None
    ) -> AsyncIterator[StreamMessage]:
        """As ``Client.stream_events``: ``async for message in client.stream_events(job_id)``."""
        return aiter_stream(self, job_id, last_event_id=last_event_id, policy=policy)

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        progress: bool = True,
        updates: AsyncJobUpdates | None = None,
    ) -> Job:
        source = (updates or astream_job())(self, job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = JobBar(job_id, enabled=progress)
        try:
            async for job in source:
                bar.update(job)
                if job.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status} after {timeout_s:.0f} s")
        finally:
            bar.close()
        raise WaitTimeout(f"job {job_id}: the update source ended before the job did")

    async def submit_prediction(
        self,
        job_id: str,
        file: str | Path | bytes | BinaryIO | None = None,
        *,
        filename: str | None = None,
        dataset_id: str | None = None,
    ) -> Prediction:
        """As ``Client.submit_prediction``."""
        body, to_close = prediction_body(file, filename, dataset_id)
        try:
            response = await self._http.post(ops.predictions_path(job_id), **body)
        finally:
            if to_close is not None:
                to_close.close()
        return ops.parse_prediction(check(response))

    async def wait_prediction(
        self, job_id: str, prediction: Prediction, *, timeout_s: float = 600.0, interval_s: float = 0.5
    ) -> Prediction:
        """As ``Client.wait_prediction``."""
        deadline = time.monotonic() + timeout_s
        while (done := settled(prediction)) is None:
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"prediction {prediction.id} still {prediction.status} after {timeout_s:.0f} s"
                )
            await asyncio.sleep(interval_s)
            prediction = await self.get_prediction(job_id, prediction.id)
        return done

    async def predict(
        self,
        job_id: str,
        file: str | Path | bytes | BinaryIO | None = None,
        *,
        filename: str | None = None,
        dataset_id: str | None = None,
        timeout_s: float = 600.0,
        interval_s: float = 0.5,
    ) -> Prediction:
        """As ``Client.predict``: the 200 answer, or the 202 one polled until the prediction ends."""
        prediction = await self.submit_prediction(job_id, file, filename=filename, dataset_id=dataset_id)
        return await self.wait_prediction(job_id, prediction, timeout_s=timeout_s, interval_s=interval_s)

    async def download_artifact(
        self, job_id: str, name: str, dest: str | Path | None = None, *, progress: bool = False
    ) -> Path:
        artifact = await self._artifact(job_id, name)
        sink = ArtifactSink(Path(dest or name), name=name, size=artifact.size, progress=progress)
        try:
            async with self._http.stream("GET", ops.artifact_path(job_id, name)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    check(response)
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    sink.write(chunk)
        except BaseException:
            sink.abort()
            raise
        return sink.finish(artifact.sha256)

    async def _artifact(self, job_id: str, name: str) -> Artifact:
        for artifact in await self.list_artifacts(job_id):
            if artifact.name == name:
                return artifact
        raise ApiError(
            404, title="Not Found", detail=f"job {job_id!r} has no artifact {name!r}", code="not-found"
        )
