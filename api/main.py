"""FastAPI app factory: ``uvicorn api.main:app`` or ``create_app(settings)`` in tests."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api.guard import RequestGuard
from api.observability import MetricsMiddleware, RequestMetrics
from api.problems import install_problem_handlers
from api.routes import include_routers
from api.settings import Settings, get_settings

DESCRIPTION = """Refines image clusterings with RUC (Park et al., CVPR 2021).

Upload a dataset (and optionally checkpoints), submit a job, poll it, fetch results and artifacts.
Every `/v1` route needs `Authorization: Bearer <api key>`; errors are RFC 7807 `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    logging.getLogger("api").setLevel(settings.log_level)
    app = FastAPI(title="ruc-service", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
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
