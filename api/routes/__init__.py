"""One router per resource, gathered in ``api_router`` (under /v1) and ``ops_router`` (health, metrics)."""

from fastapi import APIRouter

from api.routes import checkpoints, datasets, health, jobs

api_router = APIRouter(prefix="/v1")
api_router.include_router(datasets.router)
api_router.include_router(checkpoints.router)
api_router.include_router(jobs.router)

ops_router = health.router

__all__ = ["api_router", "ops_router"]
