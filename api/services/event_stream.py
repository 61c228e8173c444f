"""Server-Sent Events of one job (``GET /v1/jobs/{id}/events/stream``): events, per-epoch metrics and
status snapshots as the worker writes them, read by polling the database.

Each poll opens one short session in the thread pool (no session is held for the stream's lifetime) and
reads at most ``stream_batch`` events and metric rows. The message id is the cursor
``<event id>-<metric id>-<status digest>``: the two counters only grow, the digest names the last
status sent, so a client that reconnects with ``Last-Event-ID`` gets exactly what followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.problems import field_error, not_found
from api.schemas.jobs import EpochMetricsPublic, EventPublic, JobPublic
from service.db.crud import jobs as crud
from service.db.models import FINISHED_STATUSES
from service.db.session import get_sessionmaker
from service.settings import Settings

RECONNECT_MS = 1000
PING = ": ping\n\n"
_CURSOR = re.compile(r"([0-9]{1,18})-([0-9]{1,18})-([0-9a-f]{1,16})")
# What the `after` query and the Last-Event-ID header accept, declared in the OpenAPI document: a
# message id, or empty for "from the start".
CURSOR_PATTERN = f"^({_CURSOR.pattern})?$"


@dataclass(frozen=True)
class Cursor:
    """Where a client stands: last event id, last metric row id, digest of the last status sent."""

    event: int = 0
    metric: int = 0
    status: str = "0"

    def render(self) -> str:
        return f"{self.event}-{self.metric}-{self.status}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if not text:
            return cls()
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise field_error(
                422, "Last-Event-ID", f"{text[:60]!r} is not a stream id (<event>-<metric>-<status>)"
            )
        return cls(int(match[1]), int(match[2]), match[3])


@dataclass(frozen=True)
class Poll:
    job: JobPublic | None  # None: the job is not (or no longer) there
    events: list[EventPublic]
    metrics: list[tuple[int, EpochMetricsPublic]]  # (row id, row)
    has_more: bool


def read_poll(database_url: str, owner: str, job_id: str, cursor: Cursor, limit: int) -> Poll:
    """One short session: the job first, then what was written after ``cursor``. The worker writes the
    final status last, so events read after a final job row are complete."""
    session = get_sessionmaker(database_url)()
    try:
        row = crud.get_job(session, owner, job_id)
        if row is None:
            return Poll(None, [], [], False)
        job = JobPublic.model_validate(row)
        events, more_events = crud.list_events(session, job_id, after=cursor.event or None, limit=limit)
        metrics, more_metrics = crud.list_metrics_after(
            session, job_id, after=cursor.metric or None, limit=limit
        )
        return Poll(
            job,
            [EventPublic.model_validate(e) for e in events],
            [(m.id, EpochMetricsPublic.model_validate(m)) for m in metrics],
            more_events or more_metrics,
        )
    finally:
        session.close()


def status_digest(job: JobPublic) -> str:
    """Changes whenever a field a follower shows changes (progress to 0.1 %)."""
    key = (
        f"{job.status}|{job.stage}|{job.epoch}|{job.total_epochs}|{round(job.progress, 3)}|"
        f"{job.attempts}|{job.cancel_requested}|{job.error_code}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _message(cursor: Cursor, kind: str, data: str) -> str:
    # model_dump_json writes one line, so each message has exactly one data field.
    return f"id: {cursor.render()}\nevent: {kind}\ndata: {data}\n\n"


def render_poll(poll: Poll, cursor: Cursor) -> tuple[str, Cursor]:
    """The messages of one poll (events and metrics in write order, then the status if it changed)."""
    assert poll.job is not None
    rows: list[tuple[object, int, int, str, str]] = [
        (e.created_at, 0, e.id, "event", e.model_dump_json()) for e in poll.events
    ]
    rows += [(m.created_at, 1, rid, "metrics", m.model_dump_json()) for rid, m in poll.metrics]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    parts: list[str] = []
    for _, kind_order, rid, kind, data in rows:
        cursor = replace(cursor, event=rid) if kind_order == 0 else replace(cursor, metric=rid)
        parts.append(_message(cursor, kind, data))
    if not poll.has_more:
        digest = status_digest(poll.job)
        if digest != cursor.status:
            cursor = replace(cursor, status=digest)
            parts.append(_message(cursor, "status", poll.job.model_dump_json()))
    return "".join(parts), cursor


async def _follow(
    settings: Settings, owner: str, job_id: str, cursor: Cursor, poll: Poll
) -> AsyncIterator[str]:
    started = last_write = time.monotonic()
    yield f"retry: {RECONNECT_MS}\n\n"
    while poll.job is not None:
        text, cursor = render_poll(poll, cursor)
        now = time.monotonic()
        if text:
            yield text
            last_write = now
        if not poll.has_more:
            if poll.job.status in FINISHED_STATUSES or now - started >= settings.stream_max_seconds:
                return
            if now - last_write >= settings.stream_heartbeat_seconds:
                yield PING
                last_write = now
            await asyncio.sleep(settings.stream_poll_seconds)
        poll = await run_in_threadpool(
            read_poll, settings.database_url, owner, job_id, cursor, settings.stream_batch
        )


async def open_stream(
    settings: Settings, owner: str, job_id: str, last_event_id: str | None
) -> StreamingResponse:
    """The stream of ``job_id`` from ``last_event_id`` (None: from the start); 404 for a job the owner
    does not have, checked before the response starts."""
    cursor = Cursor.parse(last_event_id)
    poll = await run_in_threadpool(
        read_poll, settings.database_url, owner, job_id, cursor, settings.stream_batch
    )
    if poll.job is None:
        raise not_found("job", job_id)
    return StreamingResponse(
        _follow(settings, owner, job_id, cursor, poll),
        media_type="text/event-stream",
        # no-transform / X-Accel-Buffering: proxies must pass each message on as it comes.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )
