"""FastAPI app factory: ``uvicorn api.main:app`` or ``create_app(settings)`` in tests."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.guard import RequestGuard
from api.observability import MetricsMiddleware, RequestMetrics
from api.problems import install_problem_handlers
from api.routes import include_routers
from api.schemas.common import errors_as_problem_json
from service.settings import Settings, get_settings
from service.storage import get_storage

DESCRIPTION = """Refines image clusterings with RUC (Park et al., CVPR 2021).

Upload a dataset (and optionally checkpoints), submit a job, poll it, fetch results and artifacts.
Every `/v1` route needs `Authorization: Bearer <api key>`; errors are RFC 7807 `application/problem+json`.
"""

# One entry per router tag, in the order the docs show them.
TAGS = [
    {"name": "datasets", "description": "Image sets (`.npz`), validated asynchronously, then used by jobs."},
    {"name": "checkpoints", "description": "Uploaded model weights a job's base method can start from."},
    {"name": "jobs", "description": "Refinement runs: submit, follow, cancel; result, events, artifacts."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics (no API key)."},
]


def operation_id(route: APIRoute) -> str:
    """The one naming rule for OpenAPI operationIds: ``<tag>_<route name>``, the resource's noun dropped.

    ``upload_dataset`` under tag ``datasets`` is ``datasets_upload``; ``get_result`` under ``jobs`` is
    ``jobs_get_result``. Generated clients name their functions after these ids, so they are part of the
    API: a route's name (its function name, or ``name=`` on the decorator) is kept stable.
    """
    if not route.tags:
        raise ValueError(f"route {route.path} has no tag; its router needs tags=[...]")
    tag = str(route.tags[0])
    nouns = {tag, tag.removesuffix("s")}
    words = [w for w in route.name.split("_") if w not in nouns] or [route.name]
    return f"{tag}_{'_'.join(words)}"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    logging.getLogger("api").setLevel(settings.log_level)
    app = FastAPI(
        title="ruc-service",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = errors_as_problem_json(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.storage = get_storage(settings)
    app.state.request_metrics = RequestMetrics()
    install_problem_handlers(app)
    include_routers(app)
    # Added last = outermost: metrics see every answer, the guard's 401/413 included.
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.request_metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # `app` is built on first access, so importing api.main (tests, tools) reads no settings.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
