"""Operations endpoints. Unauthenticated callers learn only whether the service is up and ready and
request counts by route; dependency errors go to the log, job counts need ``RUC_METRICS_TOKEN``."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.problems import problem_response
from service.db.crud.jobs import count_by_status
from service.db.models import JOB_STATUSES
from service.db.session import get_sessionmaker
from service.settings import Settings
from service.storage import get_storage
from service.storage.base import CHECK_TIMEOUT_S

router = APIRouter(tags=["health"])
log = logging.getLogger("api.health")

# Readiness must answer fast even when a dependency hangs.
PROBE_TIMEOUT_S = CHECK_TIMEOUT_S


@router.get("/healthz", name="live", summary="The process is up (liveness)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_db(settings: Settings) -> str | None:
    try:
        with get_sessionmaker(settings.database_url)() as session:
            session.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # any driver error means "not ready"
        return f"database: {type(exc).__name__}: {exc}"[:300]


def _check_broker(settings: Settings) -> str | None:
    if settings.is_filesystem_broker:
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            folder = Path(settings.broker_transport_options()[key])
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                return f"broker: folder {folder} missing or not writable"
        return None
    if settings.broker_url.startswith(("redis://", "rediss://")):
        import redis

        try:
            client = redis.Redis.from_url(
                settings.broker_url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
            )
            try:
                client.ping()
            finally:
                client.close()
            return None
        except Exception as exc:  # connection refused, timeout, auth: all "not ready"
            return f"broker: {type(exc).__name__}: {exc}"[:300]
    return None  # other transports: nothing cheap to probe


def _check_storage(settings: Settings) -> str | None:
    """A folder: it exists and is writable; a bucket: one bounded HEAD (``Storage.check``)."""
    try:
        get_storage(settings).check()
        return None
    except Exception as exc:  # StorageError, or a client that could not even be built
        return f"storage: {type(exc).__name__}: {exc}"[:300]


def _checks(settings: Settings) -> list[str]:
    return [p for p in (_check_db(settings), _check_broker(settings), _check_storage(settings)) if p]


@router.get(
    "/readyz",
    name="ready",
    summary="Database, broker and file store reachable (readiness)",
    responses={503: {"description": "Not ready: the detail names the dependency, the log says why"}},
)
async def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    problems = await run_in_threadpool(_checks, settings)
    if problems:
        log.warning("not ready: %s", "; ".join(problems))
        # The dependency's name only (database, broker, storage): hosts and errors stay in the log.
        names = ", ".join(p.split(":", 1)[0] for p in problems)
        return problem_response(
            503, f"not ready: {names} unreachable; the service log has the reason", slug="not-ready"
        )
    return JSONResponse({"status": "ready"})


def _job_counts(settings: Settings) -> dict[str, int] | None:
    try:
        with get_sessionmaker(settings.database_url)() as session:
            return count_by_status(session)
    except Exception:  # /metrics must render even while the DB is down
        return None


def _token_ok(request: Request, token: str) -> bool:
    scheme, _, sent = (request.headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


@router.get(
    "/metrics",
    name="metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics (job counts with RUC_METRICS_TOKEN)",
    responses={401: {"description": "RUC_METRICS_TOKEN is set and was not sent"}},
)
async def metrics(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if settings.metrics_token and not _token_ok(request, settings.metrics_token):
        return problem_response(
            401,
            "send 'Authorization: Bearer <RUC_METRICS_TOKEN>'",
            slug="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    lines = list(request.app.state.request_metrics.render())
    if settings.metrics_token:  # job counts span all tenants: only for the operator's scraper
        counts = await run_in_threadpool(_job_counts, settings)
        lines.append("# HELP ruc_jobs Jobs by status (all owners).")
        lines.append("# TYPE ruc_jobs gauge")
        if counts is not None:
            for status in JOB_STATUSES:
                lines.append(f'ruc_jobs{{status="{status}"}} {counts.get(status, 0)}')
        lines.append("# HELP ruc_database_up 1 when the job count query succeeded.")
        lines.append("# TYPE ruc_database_up gauge")
        lines.append(f"ruc_database_up {0 if counts is None else 1}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
