"""Request metrics in the Prometheus text format, written by hand (no extra dependency).

A pure ASGI middleware (cheaper per request than BaseHTTPMiddleware) counts requests per route
template, method and status, and records latency in a fixed-bucket histogram.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds; dense below 25 ms because the poll path's p99 target is 25 ms.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class RequestMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)
        # (method, route) -> per-bucket counts (+inf last), sum, count
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self._lock:
            self.counts[(method, route, str(status))] += 1
            b = self.buckets.get(key)
            if b is None:
                b = self.buckets[key] = [0] * (len(LATENCY_BUCKETS) + 1)
            for i, upper in enumerate(LATENCY_BUCKETS):
                if seconds <= upper:
                    b[i] += 1
                    break
            else:
                b[-1] += 1
            self.sums[key] += seconds

    def render(self) -> Iterable[str]:
        with self._lock:
            counts = dict(self.counts)
            buckets = {k: list(v) for k, v in self.buckets.items()}
            sums = dict(self.sums)
        yield "# HELP ruc_http_requests_total HTTP requests by route template, method and status."
        yield "# TYPE ruc_http_requests_total counter"
        for (method, route, status), n in sorted(counts.items()):
            yield f'ruc_http_requests_total{{method="{method}",route="{_esc(route)}",status="{status}"}} {n}'
        yield "# HELP ruc_http_request_duration_seconds Request latency by route template and method."
        yield "# TYPE ruc_http_request_duration_seconds histogram"
        for (method, route), b in sorted(buckets.items()):
            labels = f'method="{method}",route="{_esc(route)}"'
            cumulative = 0
            for upper, n in zip(LATENCY_BUCKETS, b, strict=False):
                cumulative += n
                yield f'ruc_http_request_duration_seconds_bucket{{{labels},le="{upper}"}} {cumulative}'
            cumulative += b[-1]
            yield f'ruc_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {cumulative}'
            yield f"ruc_http_request_duration_seconds_sum{{{labels}}} {sums[(method, route)]:.6f}"
            yield f"ruc_http_request_duration_seconds_count{{{labels}}} {cumulative}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def route_template(scope: Scope) -> str:
    """``/v1/jobs/{job_id}`` for ``/v1/jobs/job_01...``: ids in labels would make cardinality unbounded.

    Rebuilt from the matched path parameters because nested routers keep prefix-less paths on routes.
    """
    if scope.get("route") is None:
        return "unmatched"
    by_value = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = scope.get("path", "").split("/")
    return "/".join("{" + by_value[p] + "}" if p in by_value else p for p in parts)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(scope["method"], route_template(scope), status, time.perf_counter() - start)
