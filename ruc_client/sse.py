"""The job's Server-Sent Events stream (``GET /v1/jobs/{id}/events/stream``) for both clients: a line
parser, the reconnecting readers (``Last-Event-ID``) and the ``wait`` sources built on them, which fall
back to polling when the server has no stream route or the stream keeps failing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from ruc_client._shared import check, retryable_status
from ruc_client.errors import ApiError, RucClientError
from ruc_client.models import Job

if TYPE_CHECKING:
    from ruc_client.async_client import AsyncClient, AsyncJobUpdates
    from ruc_client.client import Client, JobUpdates

# 404/405: a server without the route (or a job that is not there: polling then says which).
NO_STREAM_STATUSES = frozenset({404, 405})


def stream_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/events/stream"


class StreamUnavailable(RucClientError):
    """The stream cannot be used: the route answered 404/405, or it failed ``max_failures`` times in a
    row. ``wait`` then polls instead."""


@dataclass(frozen=True)
class StreamMessage:
    """One message: ``event`` is ``event``, ``metrics``, ``status`` or ``comment`` (a heartbeat, its
    text in ``data``); ``id`` is the cursor to resume after it (None for comments)."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)

    def job(self) -> Job:
        """The job snapshot of a ``status`` message."""
        return Job.model_validate_json(self.data)

    @property
    def final(self) -> bool:
        return self.event == "status" and self.job().finished


class SSEParser:
    """Incremental text/event-stream parser: ``feed`` one line (without its newline) at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> StreamMessage | None:
        if line == "":
            if not self._data:
                self._event, self._id = "", None
                return None
            message = StreamMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return StreamMessage("comment", line[1:].strip())
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # `retry:` and unknown fields: nothing to do


@dataclass(frozen=True)
class StreamPolicy:
    """``max_failures`` connections in a row that fail (transport error, 5xx/429, or closed with nothing
    said) give up with ``StreamUnavailable``; between them, the client's retry backoff."""

    max_failures: int = 3


class _Failed(Exception):
    pass


def _headers(last_id: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    return headers


def _refuse(response: httpx.Response) -> None:
    """After the body is read: raise for an answer that is not a stream."""
    if response.status_code in NO_STREAM_STATUSES:
        raise StreamUnavailable(str(ApiError.from_response(response)))
    if retryable_status(response.status_code):
        raise _Failed(str(response.status_code))
    check(response)


def _count(failures: int, policy: StreamPolicy, exc: Exception) -> int:
    failures += 1
    if failures >= policy.max_failures:
        raise StreamUnavailable(f"stream failed {failures} times in a row: {exc}") from exc
    return failures


def iter_stream(
    client: Client, job_id: str, *, last_event_id: str | None = None, policy: StreamPolicy | None = None
) -> Iterator[StreamMessage]:
    """The job's messages until its final status, reconnecting with ``Last-Event-ID`` whenever the
    connection drops or the server ends the stream early (its lifetime limit)."""
    policy, backoff, last_id, failures = policy or StreamPolicy(), client.retry, last_event_id, 0
    while True:
        said = False
        try:
            with client._http.stream("GET", stream_path(job_id), headers=_headers(last_id)) as response:
                if response.status_code != 200:
                    response.read()
                    _refuse(response)
                parser = SSEParser()
                for line in response.iter_lines():
                    if (message := parser.feed(line)) is None:
                        continue
                    said, failures, last_id = True, 0, message.id or last_id
                    yield message
                    if message.final:
                        return
            if not said:
                raise _Failed("closed without a message")
        except (httpx.TransportError, _Failed) as exc:
            failures = _count(failures, policy, exc)
            time.sleep(backoff.delay(failures - 1))


async def aiter_stream(
    client: AsyncClient,
    job_id: str,
    *,
    last_event_id: str | None = None,
    policy: StreamPolicy | None = None,
) -> AsyncIterator[StreamMessage]:
    """``iter_stream`` on asyncio."""
    policy, backoff, last_id, failures = policy or StreamPolicy(), client.retry, last_event_id, 0
    while True:
        said = False
        try:
            async with client._http.stream("GET", stream_path(job_id), headers=_headers(last_id)) as response:
                if response.status_code != 200:
                    await response.aread()
                    _refuse(response)
                parser = SSEParser()
                async for line in response.aiter_lines():
                    if (message := parser.feed(line)) is None:
                        continue
                    said, failures, last_id = True, 0, message.id or last_id
                    yield message
                    if message.final:
                        return
            if not said:
                raise _Failed("closed without a message")
        except (httpx.TransportError, _Failed) as exc:
            failures = _count(failures, policy, exc)
            await asyncio.sleep(backoff.delay(failures - 1))


def stream_job(*, policy: StreamPolicy | None = None, fallback: JobUpdates | None = None) -> JobUpdates:
    """The default source of ``Client.wait``: each ``status`` message's job; on a heartbeat the last
    one again (so ``wait`` checks its deadline while nothing happens). ``fallback`` (default:
    ``poll_job()``) takes over when the stream is unavailable."""

    def updates(client: Client, job_id: str) -> Iterator[Job]:
        from ruc_client.client import poll_job

        last: Job | None = None
        try:
            for message in iter_stream(client, job_id, policy=policy):
                if message.event == "status":
                    last = message.job()
                    yield last
                elif message.event == "comment" and last is not None:
                    yield last
        except StreamUnavailable:
            yield from (fallback or poll_job())(client, job_id)

    return updates


def astream_job(
    *, policy: StreamPolicy | None = None, fallback: AsyncJobUpdates | None = None
) -> AsyncJobUpdates:
    """``stream_job`` for ``AsyncClient.wait`` (fallback: ``apoll_job()``)."""

    async def updates(client: AsyncClient, job_id: str) -> AsyncIterator[Job]:
        from ruc_client.async_client import apoll_job

        last: Job | None = None
        try:
            async for message in aiter_stream(client, job_id, policy=policy):
                if message.event == "status":
                    last = message.job()
                    yield last
                elif message.event == "comment" and last is not None:
                    yield last
        except StreamUnavailable:
            async for job in (fallback or apoll_job())(client, job_id):
                yield job

    return updates


__all__ = [
    "SSEParser",
    "StreamMessage",
    "StreamPolicy",
    "StreamUnavailable",
    "aiter_stream",
    "astream_job",
    "iter_stream",
    "stream_job",
]
