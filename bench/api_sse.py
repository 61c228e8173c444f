"""The SSE path of ``bench/api_load.py --sse``: ``GET /v1/jobs/{id}/events/stream`` under S concurrent
streams, httpx async clients in this process.

- replay: a finished job with E events (written straight into the database); S streams each read it
  from the start to the final status: events delivered per second, time to the first event;
- live: S streams held on a running job while this process inserts R events per second for D seconds:
  the API's RSS before the streams and with them (RSS per stream), events delivered per second, and
  event latency = arrival at a client minus the writer's clock just before its INSERT (so it includes
  the commit and the stream's poll interval, RUC_STREAM_POLL_SECONDS, 0.5 s by default).
"""

from __future__ import annotations

import asyncio
import json
import resource
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from api_stack import Stack, cpu_seconds, percentile, rss_kib


@dataclass
class Tally:
    """What one stream saw."""

    first_event_s: float = float("nan")
    events: int = 0
    latencies: list[float] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed_by_server: bool = False


def _job(stack: Stack, status: str, events: int) -> str:
    """A job row of ``status`` with ``events`` events, inserted directly (no worker runs it)."""
    from service.db.crud import jobs as crud
    from service.db.models import new_id
    from service.db.session import session_scope

    with session_scope(stack.db_url) as s:
        job = crud.create_job(
            s,
            job_id=new_id("job"),
            owner_id=stack.owner_id,
            dataset_id=stack.dataset_id,
            spec={"dataset_id": stack.dataset_id, "num_clusters": 10},
            total_epochs=5,
            max_attempts=1,
            idempotency_key=None,
            request_hash="0" * 64,
        )
        job.status = status
        if status == "running":
            job.started_at = datetime.now(UTC)
        for i in range(events):
            crud.add_event(s, job.id, "info", f"bench event {i}", {"i": i})
        return job.id


async def _follow(client: httpx.AsyncClient, url: str, tally: Tally) -> None:
    t0 = time.monotonic()
    kind = ""
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                tally.connected.set()
                if kind != "event":
                    continue
                now = time.time()
                if tally.events == 0:
                    tally.first_event_s = time.monotonic() - t0
                tally.events += 1
                sent = (json.loads(line[6:]).get("data") or {}).get("t")
                if sent is not None:
                    tally.latencies.append(now - sent)
    tally.closed_by_server = True


def _client(stack: Stack, streams: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.base,
        headers=stack.headers,
        timeout=httpx.Timeout(60, read=None),
        limits=httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4),
    )


async def replay(stack: Stack, streams: int, events: int) -> dict[str, float]:
    job_id = _job(stack, "succeeded", events)
    tallies = [Tally() for _ in range(streams)]
    async with _client(stack, streams) as client:
        t0 = time.monotonic()
        await asyncio.gather(*(_follow(client, f"/v1/jobs/{job_id}/events/stream", t) for t in tallies))
        wall = time.monotonic() - t0
    delivered = sum(t.events for t in tallies)
    assert delivered == streams * events, (delivered, streams * events)
    firsts = [t.first_event_s for t in tallies]
    return {
        "wall_s": wall,
        "events_per_s": delivered / wall,
        "first_p50_ms": percentile(firsts, 50) * 1e3,
        "first_p99_ms": percentile(firsts, 99) * 1e3,
    }


def _writer(stack: Stack, job_id: str, rate: float, seconds: float, written: list[int]) -> None:
    """Insert ``rate`` events per second for ``seconds`` (fewer when commits fall behind), each carrying
    the writer's clock just before its INSERT; appends the count to ``written`` when done."""
    from service.db.crud import jobs as crud
    from service.db.session import session_scope

    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        with session_scope(stack.db_url) as s:
            crud.add_event(s, job_id, "info", f"live event {i}", {"i": i, "t": time.time()})
        i += 1
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
    written.append(i)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _finish(stack: Stack, job_id: str) -> None:
    from sqlalchemy import update

    from service.db.models import Job
    from service.db.session import session_scope

    with session_scope(stack.db_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))


async def live(stack: Stack, streams: int, rate: float, seconds: float, idle: int) -> dict[str, float]:
    """``idle``: the API's RSS (KiB) before any stream was opened (a later figure would include the
    memory earlier streams left to the allocator)."""
    job_id = _job(stack, "running", 0)
    tallies = [Tally() for _ in range(streams)]
    async with _client(stack, streams) as client:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(_follow(client, f"/v1/jobs/{job_id}/events/stream", t)) for t in tallies]
        await asyncio.wait_for(asyncio.gather(*(t.connected.wait() for t in tallies)), 120)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(2)  # settle: every stream is in its poll loop
        held = rss_kib(stack.api.pid)
        written: list[int] = []
        writer = threading.Thread(target=_writer, args=(stack, job_id, rate, seconds, written), daemon=True)
        api_cpu, own_cpu, t1 = cpu_seconds(stack.api.pid), _own_cpu(), time.monotonic()
        writer.start()
        peak = held
        while not written:
            peak = max(peak, rss_kib(stack.api.pid))
            await asyncio.sleep(0.2)
        window = time.monotonic() - t1
        api_cpu = (cpu_seconds(stack.api.pid) - api_cpu) / window
        own_cpu = (_own_cpu() - own_cpu) / window
        await asyncio.sleep(1.5)  # the last events' polls
        _finish(stack, job_id)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    delivered = sum(t.events for t in tallies)
    latencies = [x for t in tallies for x in t.latencies]
    return {
        "connect_s": connect_s,
        "idle_mib": idle / 1024,
        "held_mib": held / 1024,
        "peak_mib": peak / 1024,
        "kib_per_stream": (held - idle) / streams,
        "written": written[0],
        "delivered": delivered,
        "lost": streams * written[0] - delivered,
        "events_per_s": delivered / seconds,  # the writer's window: rate x streams when none is late
        "lat_p50_ms": percentile(latencies, 50) * 1e3,
        "lat_p99_ms": percentile(latencies, 99) * 1e3,
        "api_cpu": api_cpu,
        "client_cpu": own_cpu,
        "closed": sum(t.closed_by_server for t in tallies),
    }


def run(stack: Stack, streams: list[int], *, events: int, rate: float, seconds: float) -> None:
    print(f"SSE, live: {rate:g} events/s written for {seconds:g} s; replay: {events} events per stream")
    asyncio.run(replay(stack, 1, 10))  # warm-up: key cache, the API's connection pool
    idle = rss_kib(stack.api.pid)
    print(
        f"{'streams':>8}{'connect s':>11}{'RSS idle':>10}{'RSS held':>10}{'KiB/stream':>12}"
        f"{'live ev/s':>11}{'lat p50 ms':>12}{'lat p99 ms':>12}{'written':>9}{'lost':>6}"
    )
    for s in streams:
        r = asyncio.run(live(stack, s, rate, seconds, idle))
        print(
            f"{s:>8}{r['connect_s']:>11.2f}{r['idle_mib']:>9.0f}M{r['held_mib']:>9.0f}M"
            f"{r['kib_per_stream']:>12.0f}{r['events_per_s']:>11.0f}{r['lat_p50_ms']:>12.0f}"
            f"{r['lat_p99_ms']:>12.0f}{r['written']:>9}{r['lost']:>6.0f}"
            f"{r['api_cpu']:>8.0%} {r['client_cpu']:>10.0%}"
        )
    print(f"{'streams':>8}{'replay ev/s':>13}{'1st p50 ms':>12}{'1st p99 ms':>12}{'wall s':>8}")
    for s in streams:
        r = asyncio.run(replay(stack, s, events))
        print(
            f"{s:>8}{r['events_per_s']:>13.0f}{r['first_p50_ms']:>12.1f}{r['first_p99_ms']:>12.1f}"
            f"{r['wall_s']:>8.1f}"
        )
