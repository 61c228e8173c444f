"""The job event stream (Server-Sent Events) against the real API + Celery workers (Postgres, Redis):
a 3-epoch job followed live, resumed from its middle, refused to another key, kept open by heartbeats
and followed by ``Client.wait``. A second API process runs with a 1 s heartbeat and a 2 s stream
lifetime, so the clients here also reconnect with Last-Event-ID while the job runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from integration_support import Services, create_key, digits_npz, small_spec

from ruc_client import ApiError, AsyncClient, Client, Job, SSEParser, StreamMessage, stream_job

HEARTBEAT_S = 1.0
LIFETIME_S = 2.0
EPOCHS = 3
STAGES = ["loading", "base_clustering", "sampling", "refining", "evaluating", "saving"]


@pytest.fixture(scope="module")
def sse_api(services: Services) -> Iterator[Services]:
    """Another API process on the same database and broker (the session's workers run the jobs)."""
    env = {
        **services.env,
        "RUC_STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
        "RUC_STREAM_MAX_SECONDS": str(LIFETIME_S),
        "RUC_STREAM_POLL_SECONDS": "0.2",
    }
    api = Services(env, services.data_dir, services.log_dir, services.database_url, key=services.key)
    api.start_api()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def client(sse_api: Services) -> Iterator[Client]:
    with Client(sse_api.base_url, sse_api.key) as c:
        yield c


def _spec(dataset_id: str, epochs: int) -> dict[str, Any]:
    spec = small_spec(dataset_id, epochs=epochs)
    spec["evaluate"] = {"attacks": [{"kind": "fgsm", "eps": [8 / 255]}], "attack_max_samples": 32}
    return spec


@pytest.fixture(scope="module")
def dataset_id(client: Client) -> str:
    row = client.upload_dataset(digits_npz(n=300), filename="digits.npz")
    assert client.wait_dataset(row.id, timeout_s=180).status == "ready"
    return row.id


def _cursor(message: StreamMessage) -> tuple[int, int]:
    assert message.id is not None
    event, metric, _ = message.id.split("-")
    return int(event), int(metric)


@pytest.fixture(scope="module")
def followed(client: Client, dataset_id: str) -> tuple[Job, list[StreamMessage], list[float]]:
    """A job streamed from before it starts to its end: every message and the arrival times."""
    job = client.submit_job(_spec(dataset_id, EPOCHS))
    messages: list[StreamMessage] = []
    arrivals: list[float] = [time.monotonic()]
    for message in client.stream_events(job.id):
        messages.append(message)
        arrivals.append(time.monotonic())
    return client.get_job(job.id), messages, arrivals


def test_stream_delivers_every_epoch_stage_and_final_status(
    followed: tuple[Job, list[StreamMessage], list[float]],
) -> None:
    job, messages, arrivals = followed
    assert job.status == "succeeded", (job.error_code, job.error)
    data = [m for m in messages if m.event != "comment"]
    assert [m.json()["epoch"] for m in data if m.event == "metrics"] == list(range(1, EPOCHS + 1))
    statuses = [m.job() for m in data if m.event == "status"]
    # Stage changes come as "stage X" event rows (a status snapshot may fall between two polls).
    stages = [m.json()["message"][len("stage ") :] for m in data if m.event == "event"]
    stages = [st for st in stages if st in STAGES]
    seen = list(dict.fromkeys(stages))
    assert seen == [s for s in STAGES if s in seen] and {"base_clustering", "refining"} <= set(seen)
    assert data[-1].event == "status" and _same(data[-1].job(), job)
    assert sum(s.finished for s in statuses) == 1
    # Cursors never go back and no message comes twice, across the lifetime reconnects.
    cursors = [_cursor(m) for m in data]
    assert cursors == sorted(cursors) and len({m.id for m in data}) == len(data)
    events = [m.json()["id"] for m in data if m.event == "event"]
    assert events == sorted(set(events)) and len(events) >= 3
    # The job ran longer than one stream lifetime: the stream was resumed at least once.
    assert job.finished_at is not None and (job.finished_at - job.created_at).total_seconds() > LIFETIME_S
    # While nothing happened the server sent pings: no silence much longer than the heartbeat, and
    # wherever data paused for longer than the heartbeat a ping filled the pause. (On a fast machine
    # data may never pause that long; then no ping is due.)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < HEARTBEAT_S + 2.0, max(gaps)
    data_times = [t for m, t in zip(messages, arrivals[1:], strict=True) if m.event != "comment"]
    data_pauses = [b - a for a, b in zip(data_times, data_times[1:], strict=False)]
    if max(data_pauses, default=0.0) > 1.5 * HEARTBEAT_S:
        assert any(m.event == "comment" and m.data == "ping" for m in messages)


def _same(a: Job, b: Job) -> bool:
    return (a.id, a.status, a.progress, a.epoch, a.finished_at) == (
        b.id,
        b.status,
        b.progress,
        b.epoch,
        b.finished_at,
    )


def _key(message: StreamMessage) -> tuple[str, str, tuple[int, int]]:
    """A message without the status digest of its id (a resumed stream skips the statuses between)."""
    return message.event, message.data, _cursor(message)


def _raw_stream(api: Services, job_id: str, **kwargs: Any) -> list[StreamMessage]:
    """A plain httpx read to the end: the server closes a finished job's stream by itself."""
    parser, out = SSEParser(), []
    auth = {"Authorization": f"Bearer {api.key}"}
    path = f"/v1/jobs/{job_id}/events/stream"
    with (
        httpx.Client(base_url=api.base_url, headers=auth) as http,
        http.stream("GET", path, timeout=10, **kwargs) as response,
    ):
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        for line in response.iter_lines():
            if (message := parser.feed(line)) is not None:
                out.append(message)
    return out


def test_resume_from_the_middle_sends_only_what_followed(
    sse_api: Services, followed: tuple[Job, list[StreamMessage], list[float]]
) -> None:
    job, messages, _ = followed
    data = [m for m in messages if m.event != "comment"]
    middle = next(i for i, m in enumerate(data) if m.event == "metrics" and m.json()["epoch"] == 1)
    rest = [_key(m) for m in data[middle + 1 :] if m.event != "status"]
    for kwargs in ({"headers": {"Last-Event-ID": data[middle].id}}, {"params": {"after": data[middle].id}}):
        resumed = _raw_stream(sse_api, job.id, **kwargs)
        assert [_key(m) for m in resumed if m.event != "status"] == rest
        assert [m.event for m in resumed].count("status") == 1 and _same(resumed[-1].job(), job)
        assert [m.json()["epoch"] for m in resumed if m.event == "metrics"] == list(range(2, EPOCHS + 1))
    # From the last id there is nothing left to say: the stream closes at once, empty.
    assert _raw_stream(sse_api, job.id, headers={"Last-Event-ID": data[-1].id}) == []


class CutFirstStream(httpx.HTTPTransport):
    """The first stream connection breaks after ``cut_bytes`` (mid-message); later ones pass."""

    def __init__(self, cut_bytes: int) -> None:
        super().__init__()
        self.cut_bytes = cut_bytes
        self.resumed_from: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/events/stream"):
            self.resumed_from.append(request.headers.get("last-event-id"))
            if len(self.resumed_from) == 1:
                response.stream = _Cut(response.stream, self.cut_bytes, request)
        return response


class _Cut(httpx.SyncByteStream):
    def __init__(self, inner: Any, cut_bytes: int, request: httpx.Request) -> None:
        self.inner, self.left, self.request = inner, cut_bytes, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            if len(chunk) >= self.left:
                yield chunk[: self.left]
                raise httpx.RemoteProtocolError("peer closed the connection", request=self.request)
            self.left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def test_client_resumes_a_dropped_stream_without_loss_or_repeats(
    sse_api: Services, followed: tuple[Job, list[StreamMessage], list[float]]
) -> None:
    job = followed[0]
    whole = _raw_stream(sse_api, job.id)
    first = len(f"id: {whole[0].id}\nevent: {whole[0].event}\ndata: {whole[0].data}\n\n")
    transport = CutFirstStream(len("retry: 1000\n\n") + first + 20)  # in the second message
    with Client(sse_api.base_url, sse_api.key, transport=transport) as c:
        got = list(c.stream_events(job.id))
    assert transport.resumed_from == [None, whole[0].id]
    assert got == whole and got[-1].final


def test_another_key_gets_404_and_a_bad_cursor_422(
    sse_api: Services, followed: tuple[Job, list[StreamMessage], list[float]]
) -> None:
    job = followed[0]
    other = create_key(sse_api.database_url, "sse-other")
    path = f"/v1/jobs/{job.id}/events/stream"
    with httpx.Client(base_url=sse_api.base_url, timeout=10) as http:
        assert http.get(path, headers={"Authorization": f"Bearer {other}"}).status_code == 404
        assert http.get(path).status_code == 401
        bad = http.get(path, headers={"Authorization": f"Bearer {sse_api.key}", "Last-Event-ID": "x"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]


def test_wait_follows_the_job_through_the_stream(client: Client, dataset_id: str) -> None:
    def no_polling(_c: Client, _job_id: str) -> Iterator[Job]:
        raise AssertionError("wait fell back to polling")

    job = client.submit_job(_spec(dataset_id, 1))
    seen: list[Job] = []
    source = stream_job(fallback=no_polling)

    def recording(c: Client, job_id: str) -> Iterator[Job]:
        for snapshot in source(c, job_id):
            seen.append(snapshot)
            yield snapshot

    final = client.wait(job.id, timeout_s=240, progress=False, updates=recording)
    assert final.status == "succeeded" and final.progress == 1.0
    progress = [s.progress for s in seen]
    assert progress == sorted(progress) and len({s.stage for s in seen}) >= 3

    async def async_wait() -> Job:
        async with AsyncClient(client.base_url, client._http.headers["Authorization"][7:]) as ac:
            return await ac.wait(job.id, timeout_s=30, progress=False)

    assert _same(asyncio.run(async_wait()), final)
    # A job that is not there: the stream's 404 hands over to polling, which names the job.
    with pytest.raises(ApiError) as err:
        client.wait("job_01jd5x5c9p2z6mbvyktq65jv87", timeout_s=10, progress=False)
    assert err.value.status == 404
